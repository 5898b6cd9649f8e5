//! End-to-end tests: real nodes over loopback TCP with sled on disk. One binary, a module per
//! area; the harness is the `buildmesh-tests` library.

#[path = "../common/console.rs"]
mod console_fixture;

mod builds;
mod health;
mod isolation;
mod mesh;
mod misbehaviour;
mod notifier;
mod processes;
mod requests;
mod trust;
mod web;
