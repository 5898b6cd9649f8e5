//! The composed libp2p behaviour: gossipsub (validated by the node before anything is
//! forwarded, peer scoring on), request-response with our codec, identify and ping.
//!
//! Gossip messages are not signed a second time by gossipsub: every payload (a record, a
//! signal) already carries its author's signature, which the node checks before forwarding, and
//! the forwarding peer is known from the authenticated connection. Dropping gossipsub's own
//! signatures made a 30-node mesh on two cores deliver in 1.7 s instead of 2.9 s (p50).

use std::time::Duration;

use buildmesh_protocol::Hash;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    allow_block_list, connection_limits, gossipsub, identify, identity, ping, request_response,
};

/// Connections one peer may hold open at once (a TCP and a QUIC one, and one being replaced).
pub const MAX_CONNECTIONS_PER_PEER: u32 = 3;
/// Connections established in all: a mesh of a few hundred admitted peers, each keeping
/// `max_peers` of them, stays well below; a flood of strangers at the door does not.
pub const MAX_CONNECTIONS: u32 = 1024;
/// Incoming connections still in their handshake at once.
pub const MAX_PENDING_INCOMING: u32 = 128;

use super::codec::{Codec, PROTOCOL};

/// Everything the swarm speaks.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub(crate) blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) gossipsub: gossipsub::Behaviour,
    pub(crate) sync: request_response::Behaviour<Codec>,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
}

/// The gossip topic of a mesh: one per mesh id.
pub fn topic(mesh: &Hash) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("buildmesh/{mesh}"))
}

/// The application score of a peer that has not shown its admission yet: times gossipsub's
/// application weight (10) it puts the peer at -60, below the publish threshold (-50: nothing
/// is published or gossiped to it, it is not grafted) and above the graylist (-80: its
/// subscriptions still count, so it joins the mesh the moment it is admitted).
pub(crate) const UNADMITTED_APP_SCORE: f64 = -6.0;

/// Gossipsub's peer scoring as a mesh of admitted peers needs it.
///
/// - **No IP-colocation penalty.** rust-libp2p's default (weight -5 past 10 peers on one IP,
///   squared) graylists a peer once 17 nodes share an address: on one loopback address, or a
///   dozen workers behind one NAT or in one lab, gossip then stops. Admission by key is this
///   mesh's Sybil defence, so an address says nothing about a peer here.
/// - **Invalid messages cost score.** Every payload is checked before it is forwarded, so an
///   honest peer forwards nothing we reject (but for a race with a revocation it has not heard
///   yet). Four rejected messages in quick succession take a peer below the graylist threshold;
///   the count decays by a tenth a second, so an honest race is forgotten within a minute.
/// - **No delivery-rate penalties.** A CI mesh is quiet most of the time: penalising peers for
///   delivering few messages (gossipsub's P3) would prune honest peers at every lull.
/// - Time in the mesh and first deliveries earn a little, so that a well-behaved peer is kept.
pub(crate) fn peer_score(
    topic: &gossipsub::TopicHash,
) -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let topic_params = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 300.0,
        first_message_deliveries_weight: 0.5,
        first_message_deliveries_decay: 0.9,
        first_message_deliveries_cap: 50.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -5.0,
        invalid_message_deliveries_decay: 0.9,
        ..Default::default()
    };
    let mut params = gossipsub::PeerScoreParams {
        ip_colocation_factor_weight: 0.0,
        ..Default::default()
    };
    params.topics.insert(topic.clone(), topic_params);
    (params, gossipsub::PeerScoreThresholds::default())
}

impl Behaviour {
    pub(crate) fn new(
        key: &identity::Keypair,
        mesh: &Hash,
        request_timeout: Duration,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let topic_hash = topic(mesh).hash();
        let config = gossipsub::ConfigBuilder::default()
            .heartbeat_interval(Duration::from_millis(700))
            // Nothing is forwarded until the node has checked it.
            .validate_messages()
            .validation_mode(gossipsub::ValidationMode::Permissive)
            // One payload from one publisher is one message, whoever forwards it. The publisher
            // counts: a node only publishes its own records, so a record republished by another
            // peer is a replay, and reaches validation to be refused and counted as one.
            .message_id_fn(|m: &gossipsub::Message| {
                let mut id = m.source.map(|p| p.to_bytes()).unwrap_or_default();
                id.extend_from_slice(&Hash::of(&m.data).0);
                gossipsub::MessageId::from(id)
            })
            .max_transmit_size(buildmesh_protocol::record::MAX_RECORD_BYTES + 4096)
            .duplicate_cache_time(Duration::from_secs(120))
            .build()?;
        let mut gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Author(key.public().to_peer_id()),
            config,
        )?;
        let (params, thresholds) = peer_score(&topic_hash);
        gossipsub.with_peer_score(params, thresholds)?;
        let sync = request_response::Behaviour::with_codec(
            Codec,
            [(PROTOCOL, request_response::ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(request_timeout)
                .with_max_concurrent_streams(256),
        );
        let identify = identify::Behaviour::new(identify::Config::new(
            "/buildmesh/1".to_string(),
            key.public(),
        ));
        let ping = ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(5)));
        let limits = connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
                .with_max_established(Some(MAX_CONNECTIONS))
                .with_max_pending_incoming(Some(MAX_PENDING_INCOMING)),
        );
        Ok(Behaviour {
            blocked: Default::default(),
            limits,
            gossipsub,
            sync,
            identify,
            ping,
        })
    }
}
