//! Wiring: loads a node's files, opens its store, folds its trust, starts the network, the
//! replica and the API, and shuts them down in order.
//!
//! Every long-lived service runs in the node's `TaskTracker` under the node's span. One that
//! returns an error or panics stops the whole node, and [`NodeHandle::stopped`] says which and
//! why: a node with a dead replica would otherwise go on answering its API with nothing behind
//! it, and no supervisor would restart it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use futures::FutureExt;

use buildmesh_protocol::claims::ClaimSettings;
use buildmesh_protocol::docs::{Admission, DocKind, Genesis, Role, SignedDoc};
use buildmesh_protocol::record::{Body, Record};
use buildmesh_protocol::trust::{Trust, TrustError};
use buildmesh_protocol::vv::VersionVector;
use buildmesh_protocol::{NodeId, SecretKey};
use buildmesh_store::{Store, StoreError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::claimer::{BuildView, Claimer, ClaimerClient, ClaimerParts, Load};
use crate::config::NodeConfig;
use crate::executor::ExecutorConfig;
use crate::network::{self, NetworkConfig, NetworkError};
use crate::notifier::{Notifier, NotifierClient, NotifierParts, NotifierView};
use crate::readmodel::ReadModel;
pub use crate::replica::ReplicaClient;
use crate::replica::{Metrics, NodeView, Replica, ReplicaParts};
use buildmesh_protocol::election::ElectionSettings;

/// Why a node cannot start or do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A file of the node's (key, genesis, admission) is unusable.
    #[error("{what} {path}: {reason}")]
    File {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The network failed.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// A document that trust refuses.
    #[error("refused document: {0}")]
    Document(#[from] TrustError),
    /// The API could not listen.
    #[error("cannot serve the API on {addr}: {reason}")]
    Api {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The node has not yet recovered its own log from its peers.
    #[error("the node is still recovering its own log from peers")]
    NotCaughtUp,
    /// This node's key was revoked.
    #[error("this node's key is revoked")]
    Revoked,
    /// The node is shutting down.
    #[error("the node is shutting down")]
    Stopped,
    /// Steps cannot be isolated as the configuration asks.
    #[error("{0}")]
    Isolation(String),
}

/// Why a node stopped without being asked to: a long-lived service failed.
#[derive(Clone, Debug, thiserror::Error)]
#[error("the {service} service {what}")]
pub struct Fatal {
    /// Which service.
    pub service: &'static str,
    /// What happened to it.
    pub what: String,
}

// The first service failure, and the tokens that stop the rest of the node.
#[derive(Clone, Debug)]
struct Failure {
    first: Arc<OnceLock<Fatal>>,
    claims: CancellationToken,
    node: CancellationToken,
}

impl Failure {
    // Runs a long-lived service; if it fails (an error or a panic), records why and stops the
    // node, claiming first, as a shutdown does.
    async fn watch<E: std::fmt::Display>(
        &self,
        service: &'static str,
        run: impl Future<Output = Result<(), E>>,
    ) {
        let what = match std::panic::AssertUnwindSafe(run).catch_unwind().await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => format!("failed: {e}"),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".into());
                format!("panicked: {message}")
            }
        };
        tracing::error!(service, %what, "service failed; stopping the node");
        let _ = self.first.set(Fatal { service, what });
        self.claims.cancel();
        self.node.cancel();
    }
}

// Services that end only when told to: they have no failure of their own to report.
async fn infallible(run: impl Future<Output = ()>) -> Result<(), std::convert::Infallible> {
    run.await;
    Ok(())
}

/// A running node.
#[derive(Debug)]
pub struct NodeHandle {
    /// Its id.
    pub id: NodeId,
    /// Its name (from its admission).
    pub name: String,
    /// Where its API (and the web console beside it) listens.
    pub api: SocketAddr,
    /// Where its web console alone listens, if it has its own address.
    pub web: Option<SocketAddr>,
    /// Its store, for reading.
    pub store: Arc<Store>,
    replica: ReplicaClient,
    claimer: ClaimerClient,
    notifier: NotifierClient,
    net: network::Client,
    feed: tokio::sync::broadcast::Sender<Arc<Record>>,
    claims_cancel: CancellationToken,
    cancel: CancellationToken,
    tasks: TaskTracker,
    failure: Failure,
}

fn file_err(what: &'static str, path: &std::path::Path, reason: impl ToString) -> NodeError {
    NodeError::File {
        what,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn read_doc(what: &'static str, path: &std::path::Path) -> Result<SignedDoc, NodeError> {
    let bytes = std::fs::read(path).map_err(|e| file_err(what, path, e))?;
    SignedDoc::from_bytes(&bytes).map_err(|e| file_err(what, path, e))
}

/// Starts a node. Returns once it listens; it runs until [`NodeHandle::shutdown`].
pub async fn start(config: NodeConfig) -> Result<NodeHandle, NodeError> {
    let key_text =
        std::fs::read_to_string(&config.key).map_err(|e| file_err("key", &config.key, e))?;
    let key = SecretKey::from_file_text(&key_text).map_err(|e| file_err("key", &config.key, e))?;
    let genesis_doc = read_doc("genesis", &config.genesis)?;
    let genesis =
        Genesis::verify(&genesis_doc).map_err(|e| file_err("genesis", &config.genesis, e))?;
    let admission = read_doc("admission", &config.admission)?;
    if admission.kind != DocKind::Admission {
        return Err(file_err(
            "admission",
            &config.admission,
            format!("is a {} document", admission.kind),
        ));
    }
    let store = Arc::new(tokio::task::block_in_place(|| {
        Store::open(&config.data_dir)
    })?);
    let isolation = crate::isolation::isolation(&config).await?;
    let mut trust = Trust::new(genesis.clone());
    for doc in store.docs()? {
        let _ = trust.apply(&doc);
    }
    let a: Admission = trust
        .check_admission(&admission)
        .map_err(|e| file_err("admission", &config.admission, e))?;
    if a.node != key.id() {
        return Err(file_err(
            "admission",
            &config.admission,
            format!("admits {}, but this node's key is {}", a.node, key.id()),
        ));
    }
    let _ = trust.apply(&admission);
    let me = key.id();
    let name = a.name.clone();

    let (net, events, event_loop) = network::new(
        &key,
        NetworkConfig {
            transport: network::Transport::for_addresses(&config.listen),
            listen: config.listen.clone(),
            mesh: genesis.mesh,
            request_timeout: std::time::Duration::from_secs(20),
            idle_timeout: std::time::Duration::from_secs(120),
        },
    )?;
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    let span = tracing::info_span!("node", id = %me.short(), name = %name);

    let key = Arc::new(key);
    let (feed, _) = tokio::sync::broadcast::channel(4096);
    let (signals, _) = tokio::sync::broadcast::channel(4096);
    let capacity = config
        .worker
        .max_builds
        .unwrap_or(if a.roles.contains(&Role::Worker) {
            1
        } else {
            0
        });
    let (ballots_tx, ballots_rx) = tokio::sync::mpsc::channel(256);
    let event_loop = event_loop.route_ballots(ballots_tx).gate_gossip();
    let (load_tx, load_rx) = tokio::sync::watch::channel(Load {
        running: 0,
        capacity,
        paused: None,
    });
    let load = Box::new(move || {
        let l = load_rx.borrow();
        (l.running, l.capacity, l.paused.clone())
    });
    let (replica, replica_client, membership) = Replica::new(ReplicaParts {
        key: key.clone(),
        store: store.clone(),
        trust,
        admission,
        settings: config.mesh.clone(),
        bootstrap: config.bootstrap.clone(),
        net: net.clone(),
        events,
        feed: feed.clone(),
        signals: signals.clone(),
        load,
        cancel: cancel.child_token(),
    });
    let claims_cancel = CancellationToken::new();
    let (claimer, claimer_client) = Claimer::new(ClaimerParts {
        me: key.id(),
        name: name.clone(),
        capacity,
        settings: ClaimSettings {
            lease: config.worker.lease,
            step: config.worker.claim_step,
            liveness_window: config.mesh.liveness_window,
            confirm_wait: config.worker.confirm_wait,
        },
        heartbeat_interval: config.mesh.heartbeat_interval,
        executor: ExecutorConfig {
            work_dir: config.worker.work_dir.clone(),
            supervisor: config.worker.supervisor.clone(),
            timeout_factor: config.worker.timeout_factor,
            isolation,
        },
        store: store.clone(),
        views: Arc::new(ReadModel::new(store.clone())),
        replica: replica_client.clone(),
        records: feed.subscribe(),
        signals: signals.subscribe(),
        load: load_tx,
        membership: membership.clone(),
        selfcheck: crate::selfcheck::SelfCheck {
            work_dir: config.worker.work_dir.clone(),
            floor: config.worker.min_free_disk,
            command: config.worker.check_command.clone(),
        },
        cancel: claims_cancel.clone(),
    });
    let listener = tokio::net::TcpListener::bind(config.api)
        .await
        .map_err(|e| NodeError::Api {
            addr: config.api,
            reason: e.to_string(),
        })?;
    let api = listener.local_addr().map_err(|e| NodeError::Api {
        addr: config.api,
        reason: e.to_string(),
    })?;
    let web_listener = match config.web {
        Some(addr) => {
            Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| NodeError::Api {
                        addr,
                        reason: e.to_string(),
                    })?,
            )
        }
        None => None,
    };
    let web = web_listener.as_ref().and_then(|l| l.local_addr().ok());
    let bisector_membership = membership.clone();
    let board = Arc::new(crate::bisector::Board::default());
    let (starts_tx, starts_rx) = tokio::sync::mpsc::channel(64);
    let (notifier, notifier_client) = Notifier::new(NotifierParts {
        me: key.id(),
        voter: a.roles.contains(&Role::Notifier),
        settings: config.notifier.clone(),
        election: ElectionSettings::default(),
        store: store.clone(),
        replica: replica_client.clone(),
        claimer: claimer_client.clone(),
        net: net.clone(),
        ballots: ballots_rx,
        membership,
        records: feed.subscribe(),
        signals: signals.subscribe(),
        api_hint: api.to_string(),
        board: board.clone(),
        starts: starts_tx,
        cancel: cancel.child_token(),
    });
    let (bisector, bisector_client) =
        crate::bisector::Bisector::new(crate::bisector::BisectorParts {
            board,
            starts: starts_rx,
            store: store.clone(),
            replica: replica_client.clone(),
            claimer: claimer_client.clone(),
            notifier: notifier_client.clone(),
            records: feed.subscribe(),
            membership: bisector_membership,
            cache: config.data_dir.join("bisect"),
            cancel: cancel.child_token(),
        });
    let (janitor, janitor_stats) =
        crate::janitor::Janitor::new(store.clone(), config.store.clone());
    let net_cancel = CancellationToken::new();
    let failure = Failure {
        first: Arc::new(OnceLock::new()),
        claims: claims_cancel.clone(),
        node: cancel.clone(),
    };
    {
        use tracing::Instrument;
        let f = failure.clone();
        let run_network = event_loop.run(net_cancel.clone());
        tasks.spawn(
            async move { f.watch("network", infallible(run_network)).await }
                .instrument(span.clone()),
        );
        let replica_cancel = cancel.clone();
        let net_cancel = net_cancel.clone();
        let f = failure.clone();
        tasks.spawn(
            async move {
                f.watch("replica", replica.run()).await;
                // The network goes after the replica, however it ended: peers hear of this
                // node's last records, and a failed replica takes the node down with it.
                replica_cancel.cancel();
                net_cancel.cancel();
            }
            .instrument(span.clone()),
        );
        let f = failure.clone();
        tasks.spawn(
            async move { f.watch("claimer", infallible(claimer.run())).await }
                .instrument(span.clone()),
        );
        let f = failure.clone();
        tasks.spawn(
            async move { f.watch("notifier", infallible(notifier.run())).await }
                .instrument(span.clone()),
        );
        let f = failure.clone();
        tasks.spawn(
            async move { f.watch("bisector", infallible(bisector.run())).await }
                .instrument(span.clone()),
        );
        let f = failure.clone();
        let janitor_cancel = cancel.child_token();
        tasks.spawn(
            async move {
                f.watch("janitor", infallible(janitor.run(janitor_cancel)))
                    .await
            }
            .instrument(span.clone()),
        );
        if a.roles.contains(&Role::Announcer)
            && let Some(interval) = config.announcer.poll_interval
        {
            let poll = crate::announcer::poll(
                interval,
                replica_client.clone(),
                store.clone(),
                cancel.child_token(),
            );
            let f = failure.clone();
            tasks.spawn(
                async move { f.watch("announcer", infallible(poll)).await }
                    .instrument(span.clone()),
            );
        }
        let webhook_secret = match &config.announcer.webhook_secret_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| file_err("webhook secret", p, e))?
                    .trim()
                    .as_bytes()
                    .to_vec(),
            ),
            None => std::env::var("BUILDMESH_WEBHOOK_SECRET")
                .ok()
                .map(|s| s.into_bytes()),
        };
        // What open console pages follow (`GET /events`).
        let events = Arc::new(crate::web::events::EventHub::new(cancel.child_token()));
        {
            let follow = crate::web::events::follow(
                events.clone(),
                claimer_client.views().subscribe(),
                feed.subscribe(),
            );
            let stop = cancel.child_token();
            let f = failure.clone();
            tasks.spawn(
                async move {
                    let run = async move {
                        tokio::select! {
                            _ = follow => {}
                            _ = stop.cancelled() => {}
                        }
                    };
                    f.watch("events", infallible(run)).await
                }
                .instrument(span.clone()),
            );
        }
        let state = crate::api::ApiState {
            replica: replica_client.clone(),
            claimer: claimer_client.clone(),
            notifier: notifier_client.clone(),
            store: store.clone(),
            me,
            webhook_secret: webhook_secret.map(Arc::new),
            janitor: janitor_stats,
            events: events.clone(),
            show_owner_addresses: config.show_owner_addresses,
            bisector: bisector_client,
        };
        if let Some(listener) = web_listener {
            let console = crate::web::router(state.clone());
            let web_cancel = cancel.child_token();
            let f = failure.clone();
            tasks.spawn(
                async move {
                    let served = axum::serve(listener, console)
                        .with_graceful_shutdown(async move { web_cancel.cancelled().await });
                    f.watch("web", served.into_future()).await
                }
                .instrument(span.clone()),
            );
        }
        let api_cancel = cancel.child_token();
        let f = failure.clone();
        tasks.spawn(
            async move {
                let app = crate::api::router(state);
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { api_cancel.cancelled().await });
                f.watch("api", served.into_future()).await
            }
            .instrument(span.clone()),
        );
    }
    tasks.close();
    span.in_scope(|| tracing::info!(%api, "node started"));
    for addr in &config.bootstrap {
        let _ = net.dial(addr.clone()).await;
    }
    Ok(NodeHandle {
        id: me,
        name,
        api,
        web,
        store,
        replica: replica_client,
        claimer: claimer_client,
        notifier: notifier_client,
        net,
        feed,
        claims_cancel,
        cancel,
        tasks,
        failure,
    })
}

impl NodeHandle {
    /// Authors, stores and gossips a record.
    pub async fn author(&self, body: Body) -> Result<Record, NodeError> {
        self.replica.author(body).await
    }

    /// Publishes a maintainer-signed document through this node.
    pub async fn publish_doc(&self, doc: SignedDoc) -> Result<Record, NodeError> {
        self.replica.publish_doc(doc).await
    }

    /// The admitted nodes as this node sees them.
    pub async fn nodes(&self) -> Result<Vec<NodeView>, NodeError> {
        self.replica.nodes().await
    }

    /// Counters and state.
    pub async fn metrics(&self) -> Result<Metrics, NodeError> {
        self.replica.metrics().await
    }

    /// Every record from now on that enters this node's store, in the order it entered.
    pub fn records(&self) -> tokio::sync::broadcast::Receiver<Arc<Record>> {
        self.feed.subscribe()
    }

    /// What this node holds.
    pub fn version_vector(&self) -> Result<VersionVector, NodeError> {
        Ok(self.store.version_vector()?)
    }

    /// Cuts (`true`) or restores (`false`) all connections with these nodes.
    pub async fn isolate(&self, from: &[NodeId], cut: bool) -> Result<(), NodeError> {
        self.replica.isolate(from.to_vec(), cut).await
    }

    /// The libp2p addresses this node listens on.
    pub async fn listen_addrs(&self) -> Result<Vec<libp2p::Multiaddr>, NodeError> {
        Ok(self.net.listeners().await?)
    }

    /// Waits until the node stops (after [`NodeHandle::stop`] or a fatal error); says why
    /// when a service failed.
    pub async fn stopped(&self) -> Option<Fatal> {
        self.cancel.cancelled().await;
        self.tasks.wait().await;
        self.failure.first.get().cloned()
    }

    /// Asks the node to stop, without waiting.
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    /// Every job this node knows, newest announcement first.
    pub async fn builds(&self) -> Result<Vec<BuildView>, NodeError> {
        self.claimer.builds().await
    }

    /// The read model: every build's view and the status rows, as the API serves them.
    pub fn views(&self) -> &Arc<ReadModel> {
        self.claimer.views()
    }

    /// The notifier as this node sees it.
    pub async fn notifier(&self) -> Result<NotifierView, NodeError> {
        self.notifier.view().await
    }

    /// The workers this node's claimer counts as live.
    pub async fn live_workers(&self) -> Result<Vec<NodeId>, NodeError> {
        self.claimer.live_workers().await
    }

    /// The replica's handle (author records, ask for blobs).
    pub fn replica(&self) -> &ReplicaClient {
        &self.replica
    }

    /// Stops the node in order — claiming stops and running builds are handed back, then the
    /// replica, the network and the API — and flushes the store.
    pub async fn shutdown(self) {
        self.claims_cancel.cancel();
        // Handed-back builds record their Cancelled results before the replica stops.
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(12), self.claimer.stopped()).await;
        self.cancel.cancel();
        self.tasks.wait().await;
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "store flush failed");
        }
    }

    /// Stops every task at once, without the orderly goodbye: as close to pulling the plug as a
    /// node inside a test process can get (what was flushed stays, nothing more is written).
    pub fn abort(self) {
        self.claims_cancel.cancel();
        self.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure() -> Failure {
        Failure {
            first: Arc::new(OnceLock::new()),
            claims: CancellationToken::new(),
            node: CancellationToken::new(),
        }
    }

    #[tokio::test]
    async fn a_panicking_service_stops_the_node_and_says_why() {
        let f = failure();
        f.watch("replica", async {
            if f.first.get().is_none() {
                panic!("store gone");
            }
            Ok::<(), NodeError>(())
        })
        .await;
        assert!(f.node.is_cancelled() && f.claims.is_cancelled());
        let fatal = f.first.get().expect("recorded");
        assert_eq!(fatal.service, "replica");
        assert_eq!(
            fatal.to_string(),
            "the replica service panicked: store gone"
        );
    }

    #[tokio::test]
    async fn a_failing_service_stops_the_node_and_the_first_failure_is_kept() {
        let f = failure();
        f.watch("api", async { Err::<(), _>(NodeError::Stopped) })
            .await;
        f.watch("claimer", async { Err::<(), _>(NodeError::Revoked) })
            .await;
        assert!(f.node.is_cancelled());
        assert_eq!(
            f.first.get().map(|e| e.to_string()).as_deref(),
            Some("the api service failed: the node is shutting down")
        );
    }

    #[tokio::test]
    async fn a_service_that_ends_cleanly_stops_nothing() {
        let f = failure();
        f.watch("notifier", infallible(async {})).await;
        assert!(!f.node.is_cancelled() && f.first.get().is_none());
    }
}
