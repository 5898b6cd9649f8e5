//! Change sources: how a node learns that a branch moved.
//!
//! - [`webhook`]: signed push webhooks from GitHub, Gitea, Forgejo and Gogs.
//! - [`poller`]: `git ls-remote` and the memory that turns its answers into changes.

pub mod poller;
pub mod webhook;
