//! A push webhook's JSON body, as a forge (or whoever holds the webhook secret) sends it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| buildmesh_fuzz::check::webhook(data));
