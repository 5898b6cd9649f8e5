//! Wiring: loads a node's files, opens its store, folds its trust, starts the network, the
//! replica and the API, and shuts them down in order.

use std::net::SocketAddr;
use std::sync::Arc;

use buildmesh_protocol::docs::{Admission, DocKind, Genesis, SignedDoc};
use buildmesh_protocol::record::{Body, Record};
use buildmesh_protocol::trust::{Trust, TrustError};
use buildmesh_protocol::vv::VersionVector;
use buildmesh_protocol::{NodeId, SecretKey};
use buildmesh_store::{Store, StoreError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::NodeConfig;
use crate::network::{self, NetworkConfig, NetworkError};
use crate::replica::{Metrics, NodeView, Replica, ReplicaClient, ReplicaParts};

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
}

/// A running node.
#[derive(Debug)]
pub struct NodeHandle {
    /// Its id.
    pub id: NodeId,
    /// Its name (from its admission).
    pub name: String,
    /// Where its API listens.
    pub api: SocketAddr,
    /// Its store, for reading.
    pub store: Arc<Store>,
    replica: ReplicaClient,
    net: network::Client,
    feed: tokio::sync::broadcast::Sender<Arc<Record>>,
    cancel: CancellationToken,
    tasks: TaskTracker,
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
    let (replica, replica_client) = Replica::new(ReplicaParts {
        key: key.clone(),
        store: store.clone(),
        trust,
        admission,
        settings: config.mesh.clone(),
        bootstrap: config.bootstrap.clone(),
        net: net.clone(),
        events,
        feed: feed.clone(),
        cancel: cancel.child_token(),
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
    let net_cancel = CancellationToken::new();
    {
        use tracing::Instrument;
        tasks.spawn(event_loop.run(net_cancel.clone()).instrument(span.clone()));
        let replica_cancel = cancel.clone();
        let net_cancel = net_cancel.clone();
        tasks.spawn(
            async move {
                replica.run().await;
                // The network goes after the replica: peers hear of this node's last records.
                replica_cancel.cancel();
                net_cancel.cancel();
            }
            .instrument(span.clone()),
        );
        let state = crate::api::ApiState {
            replica: replica_client.clone(),
            store: store.clone(),
            me,
        };
        let api_cancel = cancel.child_token();
        tasks.spawn(
            async move {
                let app = crate::api::router(state);
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { api_cancel.cancelled().await })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "API server failed");
                }
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
        store,
        replica: replica_client,
        net,
        feed,
        cancel,
        tasks,
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

    /// Waits until the node stops (after [`NodeHandle::stop`] or a fatal error).
    pub async fn stopped(&self) {
        self.cancel.cancelled().await;
        self.tasks.wait().await;
    }

    /// Asks the node to stop, without waiting.
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    /// Stops the node in order (replica, then network, then API) and flushes the store.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tasks.wait().await;
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "store flush failed");
        }
    }

    /// Stops every task at once, without the orderly goodbye: as close to pulling the plug as a
    /// node inside a test process can get (what was flushed stays, nothing more is written).
    pub fn abort(self) {
        self.cancel.cancel();
    }
}
