//! A record's bytes as a peer sends them (gossip, pull answers).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| buildmesh_fuzz::check::record(data));
