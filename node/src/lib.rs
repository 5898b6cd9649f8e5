//! A buildmesh node.
//!
//! - [`config`]: the node's TOML configuration, checked.
//! - [`node`]: wiring and shutdown; [`node::start`] returns a [`NodeHandle`].
//! - [`network`]: the libp2p swarm in its own task, driven through a `Client`.
//! - `replica`: the gate every record passes, trust, peers at the door, liveness, authoring.
//! - `sync`: anti-entropy with one peer.
//! - [`claimer`]: drives the claim state machine, starts builds, answers job queries.
//! - [`executor`]: runs builds (checkout, steps in process groups, timeouts, logs).
//! - [`sources`]: change sources (push webhooks, the git poller's pieces); `announcer` polls.
//! - [`api`]: the HTTP JSON API.
//! - [`testnet`]: everything a local mesh needs, written to a directory.

mod announcer;
pub mod api;
pub mod claimer;
pub mod config;
pub mod demo;
pub mod executor;
pub mod files;
mod liveness;
pub mod network;
pub mod node;
pub mod notifier;
mod replica;
pub mod smtp_sink;
pub mod sources;
pub mod testnet;

pub use claimer::BuildView;
pub use claimer::Load;
pub use node::{Fatal, NodeError, NodeHandle, start};
pub use replica::{Metrics, NodeView};
