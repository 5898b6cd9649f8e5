//! A buildmesh node.
//!
//! - [`config`]: the node's TOML configuration, checked.
//! - [`node`]: wiring, task supervision and shutdown; [`node::start`] returns a [`NodeHandle`].
//! - [`network`]: the libp2p swarm in its own task, driven through a `Client`; notifier ballots
//!   leave it on a channel of their own.
//! - `replica`: the one task that decides what enters the store and authors this node's
//!   records. Its parts: `replica::gate` (may a record enter, does it count; sans-IO),
//!   `replica::ingest` (records through the gate into the store), `replica::door` (what a
//!   connected peer must show; sans-IO), `replica::peers` (hellos, requests, gossip, signals),
//!   `replica::upkeep` (heartbeat, redial, anti-entropy rounds), `replica::sync` (anti-entropy
//!   with one peer), `replica::blobs` (blob fetch, copies of red builds' logs),
//!   `replica::views` (the node list and the counters).
//! - `liveness`: heartbeats, the live set, silent connections and redialling, as decisions over
//!   explicit times; and the `Membership` (trust and live set) the replica publishes.
//! - [`claimer`]: drives the claim state machine, starts builds, answers job queries; its
//!   [`Load`] goes into the heartbeats.
//! - [`executor`]: runs builds (checkout, steps in process groups, timeouts, logs), each step
//!   confined (its environment, its user, a sandbox, limits); [`isolation`] checks at start that
//!   the confinement the configuration asks for holds on this machine.
//! - [`notifier`]: the notifier election and the mails of red transitions.
//! - [`sources`]: change sources (push webhooks, the git poller's pieces); `announcer` polls.
//! - [`api`]: the HTTP JSON API.
//! - [`files`]: writing the files people handle (keys, documents), atomically.
//! - [`testnet`]: everything a local mesh needs, written to a directory; [`demo`]: a throwaway
//!   three-node mesh that builds, turns red and mails; [`smtp_sink`]: the mailbox both use.

mod announcer;
pub mod api;
pub mod bisector;
pub mod claimer;
pub mod config;
pub mod demo;
pub mod executor;
pub mod files;
pub mod isolation;
pub mod janitor;
mod liveness;
pub mod network;
pub mod node;
pub mod notifier;
pub mod readmodel;
mod replica;
pub mod selfcheck;
pub mod smtp_sink;
pub mod sources;
pub mod testnet;
pub mod web;

pub use claimer::{BuildView, Load};
pub use node::{Fatal, NodeError, NodeHandle, start};
pub use replica::{Metrics, NodeView};
