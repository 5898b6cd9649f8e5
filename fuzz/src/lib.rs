//! What the fuzz targets check, and the valid values their seeds are made of.
//!
//! - [`fixtures`]: a small mesh made from fixed seeds (keys, genesis, admissions, a revocation,
//!   a builder configuration, a signed record of each kind, signals, requests), the same on
//!   every run, so that a committed corpus keeps verifying.
//! - [`check`]: one function per decoder that sees outside bytes, asserting what must hold for
//!   any input: no panic, decode→encode→decode gives the same value, every value renders as
//!   the API renders it, and nothing verifies unless one of the fixture keys signed exactly
//!   those bytes (the fuzzer holds no secret key, so anything else that verified would be a
//!   forgery).
//! - [`tamper`]: valid values with their signed bytes changed, which must never verify.
//! - [`toml_edit`]: a valid builder configuration with edits, for the checks after the parse.

pub mod check;
pub mod fixtures;
pub mod tamper;
pub mod toml_edit;
