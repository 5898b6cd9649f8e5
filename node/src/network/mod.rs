//! The network: one [`EventLoop`] task owns the libp2p swarm; the rest of the node drives it
//! through a cloneable [`Client`] and hears from it through a stream of [`Event`]s.
//!
//! - `behaviour`: the composed libp2p behaviour and the mesh topic.
//! - `codec`: framing of the request-response protocol.
//! - `event_loop`: the task that owns the swarm.
//! - `client`: the handle the node uses.

mod behaviour;
mod client;
mod codec;
mod event_loop;

use std::time::Duration;

use buildmesh_protocol::wire::{Request, Response};
use buildmesh_protocol::{Hash, SecretKey};
use libp2p::{Multiaddr, PeerId, gossipsub, request_response};
use tokio::sync::mpsc;

pub use client::Client;
pub use event_loop::EventLoop;

/// A network failure the node must hear about.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The swarm could not be built.
    #[error("cannot build the network: {0}")]
    Build(String),
    /// An address that cannot be listened on.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// The event loop is gone (the node is shutting down).
    #[error("the network task has stopped")]
    Stopped,
    /// A request got no answer.
    #[error("request to {peer} failed: {reason}")]
    Request {
        /// The peer asked.
        peer: PeerId,
        /// Why.
        reason: String,
    },
}

/// What the node does with a gossip message once it has checked it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Valid: store and forward.
    Accept,
    /// Harmless but not to be forwarded (duplicate, not yet checkable).
    Ignore,
    /// Invalid: drop and lower the sender's score.
    Reject,
}

/// What the network tells the node.
#[derive(Debug)]
pub enum Event {
    /// A gossip message that waits for a [`Verdict`].
    Gossip {
        /// The peer that forwarded it.
        source: PeerId,
        /// Its id, to report the verdict.
        id: gossipsub::MessageId,
        /// The payload.
        data: Vec<u8>,
    },
    /// A request that waits for an answer through [`Client::respond`].
    Request {
        /// Who asks.
        peer: PeerId,
        /// What.
        request: Request,
        /// Where the answer goes.
        channel: request_response::ResponseChannel<Response>,
    },
    /// A first connection to a peer was established.
    Connected {
        /// The peer.
        peer: PeerId,
        /// Its address as seen from here.
        addr: Multiaddr,
    },
    /// The last connection to a peer closed.
    Disconnected {
        /// The peer.
        peer: PeerId,
    },
    /// One connection to a peer closed while others remain (a QUIC connection outlives a
    /// killed process until its idle timeout: the node asks over what remains).
    ConnectionDropped {
        /// The peer.
        peer: PeerId,
    },
    /// A new local listening address.
    Listening {
        /// The address.
        addr: Multiaddr,
    },
}

/// A notifier ballot from a peer, with where its answer goes. Ballots are the election's
/// traffic and only the notifier reads them, so when a route is set with
/// [`EventLoop::route_ballots`] they go there on a channel of their own instead of through the
/// replica's [`Event`]s.
#[derive(Debug)]
pub struct BallotRequest {
    /// Who asks (the connection proves the key; whether it is admitted is the reader's check).
    pub peer: PeerId,
    /// The ballot.
    pub ballot: buildmesh_protocol::election::Ballot,
    /// Where the answer goes, through [`Client::respond`].
    pub channel: request_response::ResponseChannel<Response>,
}

/// What carries the connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TCP and QUIC with DNS, Noise and Yamux: production.
    Network,
    /// libp2p's in-process memory transport (`/memory/N` addresses) with the same Noise and
    /// Yamux: several nodes in one test process without ports.
    Memory,
}

impl Transport {
    /// The transport that can listen on `listen`: memory when every address is a `/memory/`
    /// one (and there is at least one), the network otherwise.
    pub fn for_addresses(listen: &[Multiaddr]) -> Transport {
        let memory = |a: &Multiaddr| {
            matches!(
                a.iter().next(),
                Some(libp2p::multiaddr::Protocol::Memory(_))
            )
        };
        if !listen.is_empty() && listen.iter().all(memory) {
            Transport::Memory
        } else {
            Transport::Network
        }
    }
}

/// How the network is set up.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// What carries the connections.
    pub transport: Transport,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// The mesh id (names the gossip topic).
    pub mesh: Hash,
    /// How long a request may wait for its answer.
    pub request_timeout: Duration,
    /// How long an unused connection stays open.
    pub idle_timeout: Duration,
}

/// Builds the swarm and returns the three parts: the client, the event stream, the loop to
/// spawn.
pub fn new(
    key: &SecretKey,
    config: NetworkConfig,
) -> Result<(Client, mpsc::Receiver<Event>, EventLoop), NetworkError> {
    let keypair = libp2p::identity::Keypair::ed25519_from_bytes(key.to_seed())
        .map_err(|e| NetworkError::Build(e.to_string()))?;
    let (command_tx, command_rx) = mpsc::channel(1024);
    let (event_tx, event_rx) = mpsc::channel(4096);
    let event_loop = EventLoop::new(&keypair, config, command_rx, event_tx)?;
    Ok((Client::new(command_tx), event_rx, event_loop))
}
