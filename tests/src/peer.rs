//! A raw protocol peer: a real libp2p host speaking buildmesh's wire protocol directly, to play
//! the hosts that a node must refuse (no admission, a forged one, garbage, replays).

use std::time::Duration;

use buildmesh_node::network::{self, Client, Event, NetworkConfig};
use buildmesh_protocol::docs::SignedDoc;
use buildmesh_protocol::wire::{Hello, Request, Response};
use buildmesh_protocol::{Hash, SecretKey};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A running raw peer.
#[derive(Debug)]
pub struct Peer {
    /// Its network client.
    pub client: Client,
    /// The peers it is connected to now.
    pub connected: watch::Receiver<Vec<PeerId>>,
    /// Gossip messages it received.
    pub gossip: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    cancel: CancellationToken,
}

impl Peer {
    /// Starts a raw peer with `key` for mesh `mesh`. If `hello` is given, it answers hellos with
    /// it; otherwise it answers nothing.
    pub async fn start(key: &SecretKey, mesh: Hash, hello: Option<SignedDoc>) -> Peer {
        let (client, mut events, event_loop) = network::new(
            key,
            NetworkConfig {
                transport: network::Transport::Network,
                listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
                mesh,
                request_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(60),
            },
        )
        .expect("raw peer network");
        let cancel = CancellationToken::new();
        tokio::spawn(event_loop.run(cancel.clone()));
        let (tx, connected) = watch::channel(Vec::new());
        let gossip = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let heard = gossip.clone();
        let answerer = client.clone();
        let stop = cancel.clone();
        tokio::spawn(async move {
            let mut peers: Vec<PeerId> = Vec::new();
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => break,
                    e = events.recv() => match e { Some(e) => e, None => break },
                };
                match event {
                    Event::Connected { peer, .. } => {
                        peers.push(peer);
                        let _ = tx.send(peers.clone());
                    }
                    Event::Disconnected { peer } => {
                        peers.retain(|p| *p != peer);
                        let _ = tx.send(peers.clone());
                    }
                    Event::Request { channel, .. } => {
                        let response = match &hello {
                            Some(doc) => Response::Hello(Hello {
                                mesh,
                                admission: doc.clone(),
                            }),
                            None => Response::Refused("no".into()),
                        };
                        let _ = answerer.respond(channel, response).await;
                    }
                    Event::Gossip { id, source, .. } => {
                        heard.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let _ = answerer
                            .validate(id, source, network::Verdict::Ignore)
                            .await;
                    }
                    Event::Listening { .. } | Event::ConnectionDropped { .. } => {}
                }
            }
        });
        Peer {
            client,
            connected,
            gossip,
            cancel,
        }
    }

    /// Dials `addr` and waits until connected to `peer` (or panics after 10 s).
    pub async fn connect(&mut self, addr: Multiaddr, peer: PeerId) {
        self.client.dial(addr).await.expect("dial");
        let mut rx = self.connected.clone();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|p| p.contains(&peer)))
            .await
            .expect("connected in time")
            .expect("peer task alive");
    }

    /// Says hello with `admission` and returns the answer.
    pub async fn hello(&self, peer: PeerId, mesh: Hash, admission: SignedDoc) -> Response {
        self.client
            .request(peer, Request::Hello(Hello { mesh, admission }))
            .await
            .expect("hello answered")
    }

    /// Waits until the connection to `peer` is gone (or panics after `timeout`).
    pub async fn wait_disconnected(&self, peer: PeerId, timeout: Duration) {
        let mut rx = self.connected.clone();
        tokio::time::timeout(timeout, rx.wait_for(|p| !p.contains(&peer)))
            .await
            .expect("disconnected in time")
            .expect("peer task alive");
    }

    /// Stops the peer.
    pub fn stop(self) {
        self.cancel.cancel();
    }
}
