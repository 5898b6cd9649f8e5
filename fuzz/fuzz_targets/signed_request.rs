//! The body of a signed API write (`buildmesh submit`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| buildmesh_fuzz::check::signed_request_bytes(data));
