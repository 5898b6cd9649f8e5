//! buildmesh's protocol: the types every node agrees on, with no I/O.
//!
//! - [`codec`]: the one place CBOR is written and read (canonical encoding, size limits).
//! - [`keys`]: ed25519 keys, node ids (printed as libp2p peer ids), signatures, hashes and the
//!   domain tags that bind a signature to one kind of document or record.
//! - [`time`]: timestamps as they travel.
//! - [`docs`]: maintainer-signed documents — genesis, admission, revocation.
//! - [`builders`]: the builder configuration, its TOML form and its checks.
//! - [`bisect`]: finding the commit that turned a builder red, by n-section over idle workers
//!   with confirmed probes (sans-IO).
//! - [`entitle`]: whether a signed record counts — role per record kind, due time, unknown
//!   kinds kept but not counted.
//! - [`claims`]: claiming jobs without a master (sans-IO state machine), with the job-level
//!   entitlement of claims and results.
//! - [`health`]: confirmation of reds on another host, and each worker's health and
//!   quarantine, derived from signed results the same way everywhere (pure).
//! - [`jobs`]: which builders build an announced commit, and when its jobs open (pure).
//! - [`election`]: electing the one notifier by majority-voted leases (sans-IO).
//! - [`transitions`]: which results are red transitions that need a mail (pure).
//! - [`outbox`]: what the notifier holder mails, to whom and when: alerts and their identity,
//!   dedup across holders, the new holder's settle, backoff, missing workers (sans-IO).
//! - [`record`]: the signed, hash-chained records of each node's log and their bodies.
//! - [`vv`]: version vectors for anti-entropy.
//! - [`trust`]: the fold of documents into "may key K act as role R at time T".
//! - [`wire`]: requests, responses and signed ephemeral gossip between nodes.
//! - [`webhook`]: a forge's push payload, read from its JSON.

pub mod bisect;
pub mod builders;
pub mod claims;
pub mod codec;
pub mod docs;
pub mod election;
pub mod entitle;
pub mod health;
pub mod jobs;
pub mod keys;
pub mod outbox;
pub mod record;
pub mod time;
pub mod transitions;
pub mod trust;
pub mod vv;
pub mod webhook;
pub mod wire;

pub use keys::{Domain, Hash, NodeId, SecretKey, Signature};
pub use time::Timestamp;

/// Lower-case hex of any bytes (store keys in error messages).
pub fn keys_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}
