//! The one task that owns the swarm: it turns commands into swarm calls and swarm events into
//! domain [`Event`]s, and touches nothing else.

use std::collections::HashMap;

use futures::StreamExt;
use libp2p::core::transport::MemoryTransport;
use libp2p::core::upgrade;
use libp2p::swarm::SwarmEvent;
use libp2p::{
    PeerId, Swarm, Transport as _, gossipsub, identity, noise, request_response, tcp, yamux,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::behaviour::{Behaviour, BehaviourEvent, topic};
use super::client::Command;
use super::{BallotRequest, Event, NetworkConfig, NetworkError, Transport, Verdict};
use buildmesh_protocol::wire::{Request, Response};

/// Owns the swarm. Run it with [`EventLoop::run`].
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    topic: gossipsub::IdentTopic,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    ballots: Option<mpsc::Sender<BallotRequest>>,
    // Whether a new peer stays out of gossip until the node says it is admitted.
    gate_gossip: bool,
    pending: HashMap<
        request_response::OutboundRequestId,
        oneshot::Sender<Result<Response, NetworkError>>,
    >,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("peer", self.swarm.local_peer_id())
            .finish()
    }
}

impl EventLoop {
    pub(crate) fn new(
        keypair: &identity::Keypair,
        config: NetworkConfig,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
    ) -> Result<Self, NetworkError> {
        let build = |e: &dyn std::fmt::Display| NetworkError::Build(e.to_string());
        let timeout = config.request_timeout;
        let behaviour = |key: &identity::Keypair| Behaviour::new(key, &config.mesh, timeout);
        let swarm_config =
            |c: libp2p::swarm::Config| c.with_idle_connection_timeout(config.idle_timeout);
        let builder = libp2p::SwarmBuilder::with_existing_identity(keypair.clone()).with_tokio();
        let mut swarm = match config.transport {
            Transport::Network => builder
                .with_tcp(
                    tcp::Config::default().nodelay(true),
                    noise::Config::new,
                    yamux::Config::default,
                )
                .map_err(|e| build(&e))?
                .with_quic()
                .with_dns()
                .map_err(|e| build(&e))?
                .with_behaviour(behaviour)
                .map_err(|e| build(&e))?
                .with_swarm_config(swarm_config)
                .build(),
            // The same security and multiplexing over libp2p's in-process transport.
            Transport::Memory => builder
                .with_other_transport(|key| {
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                        MemoryTransport::default()
                            .upgrade(upgrade::Version::V1)
                            .authenticate(noise::Config::new(key)?)
                            .multiplex(yamux::Config::default()),
                    )
                })
                .map_err(|e| build(&e))?
                .with_behaviour(behaviour)
                .map_err(|e| build(&e))?
                .with_swarm_config(swarm_config)
                .build(),
        };
        let topic = topic(&config.mesh);
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&topic)
            .map_err(|e| build(&e))?;
        for addr in config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| NetworkError::Listen {
                    addr,
                    reason: e.to_string(),
                })?;
        }
        Ok(EventLoop {
            swarm,
            topic,
            commands,
            events,
            ballots: None,
            gate_gossip: false,
            pending: HashMap::new(),
        })
    }

    /// Sends notifier ballots to `ballots` instead of with the other requests. When that
    /// channel is full a ballot is answered with no ballots at once (as a node outside the
    /// election answers): the event loop never waits on the notifier, which waits on it.
    pub fn route_ballots(mut self, ballots: mpsc::Sender<BallotRequest>) -> Self {
        self.ballots = Some(ballots);
        self
    }

    /// Keeps every new peer out of gossip until [`super::Client::admit`] names it: its
    /// application score holds it below gossipsub's publish threshold (nothing is published or
    /// gossiped to it, it is never grafted into the mesh) but above the graylist, so that its
    /// subscriptions are still heard and it joins the mesh as soon as it is admitted.
    pub fn gate_gossip(mut self) -> Self {
        self.gate_gossip = true;
        self
    }

    /// Runs until `cancel` fires or every [`super::Client`] is dropped.
    pub async fn run(mut self, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                command = self.commands.recv() => match command {
                    Some(c) => self.command(c),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.swarm_event(event).await,
            }
        }
        // Close connections so that peers learn at once that this node left.
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for p in peers {
            let _ = self.swarm.disconnect_peer_id(p);
        }
        tracing::debug!("network stopped");
    }

    fn command(&mut self, c: Command) {
        let b = self.swarm.behaviour_mut();
        match c {
            Command::Publish { data } => {
                if let Err(e) = b.gossipsub.publish(self.topic.clone(), data) {
                    // No peer yet, or a duplicate: anti-entropy delivers it later.
                    tracing::debug!(error = %e, "gossip not published");
                }
            }
            Command::Validate {
                id,
                source,
                verdict,
            } => {
                let acceptance = match verdict {
                    Verdict::Accept => gossipsub::MessageAcceptance::Accept,
                    Verdict::Ignore => gossipsub::MessageAcceptance::Ignore,
                    Verdict::Reject => gossipsub::MessageAcceptance::Reject,
                };
                b.gossipsub
                    .report_message_validation_result(&id, &source, acceptance);
            }
            Command::Request {
                peer,
                request,
                reply,
            } => {
                let id = b.sync.send_request(&peer, request);
                self.pending.insert(id, reply);
            }
            Command::Respond { channel, response } => {
                if b.sync.send_response(channel, response).is_err() {
                    tracing::debug!("response not sent: the asker went away");
                }
            }
            Command::Dial { addr } => {
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    tracing::debug!(%addr, error = %e, "dial failed");
                }
            }
            Command::DialPeer { peer, addrs } => {
                let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                    .condition(libp2p::swarm::dial_opts::PeerCondition::DisconnectedAndNotDialing)
                    .addresses(addrs)
                    .build();
                if let Err(e) = self.swarm.dial(opts) {
                    tracing::debug!(%peer, error = %e, "dial not made");
                }
            }
            Command::Disconnect { peer } => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::Block { peer } => {
                b.blocked.block_peer(peer);
            }
            Command::Unblock { peer } => {
                b.blocked.unblock_peer(peer);
            }
            Command::Admit { peer } => {
                b.gossipsub.set_application_score(&peer, 0.0);
            }
            Command::Peers { reply } => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::Listeners { reply } => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
        }
    }

    async fn swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                emit(
                    &self.events,
                    Event::Gossip {
                        source: propagation_source,
                        id: message_id,
                        data: message.data,
                    },
                )
                .await;
            }
            SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::Message {
                peer,
                message,
                ..
            })) => match message {
                request_response::Message::Request {
                    request: Request::Ballot(ballot),
                    channel,
                    ..
                } if self.ballots.is_some() => {
                    let ballots = self.ballots.as_ref().expect("checked above");
                    if let Err(e) = ballots.try_send(BallotRequest {
                        peer,
                        ballot,
                        channel,
                    }) {
                        tracing::debug!(%peer, "ballot not taken: the notifier is busy or gone");
                        let refused = match e {
                            mpsc::error::TrySendError::Full(b)
                            | mpsc::error::TrySendError::Closed(b) => b,
                        };
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .sync
                            .send_response(refused.channel, Response::Ballots(Vec::new()));
                    }
                }
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    emit(
                        &self.events,
                        Event::Request {
                            peer,
                            request,
                            channel,
                        },
                    )
                    .await;
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(reply) = self.pending.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Sync(
                request_response::Event::OutboundFailure {
                    peer,
                    request_id,
                    error,
                    ..
                },
            )) => {
                if let Some(reply) = self.pending.remove(&request_id) {
                    let _ = reply.send(Err(NetworkError::Request {
                        peer,
                        reason: error.to_string(),
                    }));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Sync(
                request_response::Event::InboundFailure { peer, error, .. },
            )) => {
                tracing::debug!(%peer, %error, "inbound request failed");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(
                libp2p::identify::Event::Received { peer_id, info, .. },
            )) => {
                tracing::trace!(peer = %peer_id, agent = %info.agent_version, "identified");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } if num_established.get() == 1 => {
                if self.gate_gossip {
                    self.swarm
                        .behaviour_mut()
                        .gossipsub
                        .set_application_score(&peer_id, super::behaviour::UNADMITTED_APP_SCORE);
                }
                let addr = endpoint.get_remote_address().clone();
                emit(
                    &self.events,
                    Event::Connected {
                        peer: peer_id,
                        addr,
                    },
                )
                .await;
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                ..
            } => {
                let event = if num_established == 0 {
                    Event::Disconnected { peer: peer_id }
                } else {
                    Event::ConnectionDropped { peer: peer_id }
                };
                emit(&self.events, event).await;
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                emit(&self.events, Event::Listening { addr: address }).await;
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, %error, "outgoing connection failed");
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                tracing::debug!(%error, "incoming connection failed");
            }
            _ => {}
        }
    }
}

// The node is gone only during shutdown; nothing to do then.
async fn emit(events: &mpsc::Sender<Event>, e: Event) {
    let _ = events.send(e).await;
}
