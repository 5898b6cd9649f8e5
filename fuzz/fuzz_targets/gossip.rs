//! A message on the mesh's gossip topic: a record or a signed signal.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| buildmesh_fuzz::check::gossip(data));
