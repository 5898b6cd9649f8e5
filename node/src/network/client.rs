//! The node's handle on the network task.

use buildmesh_protocol::wire::{Request, Response};
use libp2p::{Multiaddr, PeerId, gossipsub, request_response};
use tokio::sync::{mpsc, oneshot};

use super::{NetworkError, Verdict};

/// What the node asks of the event loop.
#[derive(Debug)]
pub(crate) enum Command {
    Publish {
        data: Vec<u8>,
    },
    Validate {
        id: gossipsub::MessageId,
        source: PeerId,
        verdict: Verdict,
    },
    Request {
        peer: PeerId,
        request: Request,
        reply: oneshot::Sender<Result<Response, NetworkError>>,
    },
    Respond {
        channel: request_response::ResponseChannel<Response>,
        response: Response,
    },
    Dial {
        addr: Multiaddr,
    },
    DialPeer {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    },
    Disconnect {
        peer: PeerId,
    },
    Block {
        peer: PeerId,
    },
    Unblock {
        peer: PeerId,
    },
    Admit {
        peer: PeerId,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    Listeners {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
}

/// A cloneable handle: every method is a message to the event loop.
#[derive(Clone, Debug)]
pub struct Client {
    tx: mpsc::Sender<Command>,
}

impl Client {
    pub(crate) fn new(tx: mpsc::Sender<Command>) -> Self {
        Client { tx }
    }

    async fn send(&self, c: Command) -> Result<(), NetworkError> {
        self.tx.send(c).await.map_err(|_| NetworkError::Stopped)
    }

    /// Gossips `data` on the mesh topic.
    pub async fn publish(&self, data: Vec<u8>) -> Result<(), NetworkError> {
        self.send(Command::Publish { data }).await
    }

    /// Reports the verdict on a gossip message (forward it, drop it, or punish the sender).
    pub async fn validate(
        &self,
        id: gossipsub::MessageId,
        source: PeerId,
        verdict: Verdict,
    ) -> Result<(), NetworkError> {
        self.send(Command::Validate {
            id,
            source,
            verdict,
        })
        .await
    }

    /// Sends a request and waits for its answer.
    pub async fn request(&self, peer: PeerId, request: Request) -> Result<Response, NetworkError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Request {
            peer,
            request,
            reply,
        })
        .await?;
        rx.await.map_err(|_| NetworkError::Stopped)?
    }

    /// Answers a request.
    pub async fn respond(
        &self,
        channel: request_response::ResponseChannel<Response>,
        response: Response,
    ) -> Result<(), NetworkError> {
        self.send(Command::Respond { channel, response }).await
    }

    /// Dials an address (with or without a `/p2p/` peer id).
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetworkError> {
        self.send(Command::Dial { addr }).await
    }

    /// Dials `peer` unless it is connected or being dialled: its addresses one after another,
    /// keeping the first connection made. One connection per peer, not one per address.
    pub async fn dial_peer(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<(), NetworkError> {
        self.send(Command::DialPeer { peer, addrs }).await
    }

    /// Closes every connection to `peer`.
    pub async fn disconnect(&self, peer: PeerId) -> Result<(), NetworkError> {
        self.send(Command::Disconnect { peer }).await
    }

    /// Refuses every connection to and from `peer` until unblocked (revoked keys; tests that
    /// cut the mesh in two).
    pub async fn block(&self, peer: PeerId) -> Result<(), NetworkError> {
        self.send(Command::Block { peer }).await
    }

    /// Lifts a [`Client::block`].
    pub async fn unblock(&self, peer: PeerId) -> Result<(), NetworkError> {
        self.send(Command::Unblock { peer }).await
    }

    /// Lets an admitted peer into gossip (see [`super::EventLoop::gate_gossip`]).
    pub async fn admit(&self, peer: PeerId) -> Result<(), NetworkError> {
        self.send(Command::Admit { peer }).await
    }

    /// The peers connected now.
    pub async fn peers(&self) -> Result<Vec<PeerId>, NetworkError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Peers { reply }).await?;
        rx.await.map_err(|_| NetworkError::Stopped)
    }

    /// The addresses listened on now.
    pub async fn listeners(&self) -> Result<Vec<Multiaddr>, NetworkError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Listeners { reply }).await?;
        rx.await.map_err(|_| NetworkError::Stopped)
    }
}
