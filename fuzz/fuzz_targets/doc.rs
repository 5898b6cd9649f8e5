//! A document file, as `buildmesh` commands and `Publish` records carry it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| buildmesh_fuzz::check::doc_bytes(data));
