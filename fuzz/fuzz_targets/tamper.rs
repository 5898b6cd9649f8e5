//! A valid signed value of every kind with some of its signed bytes or signature changed: it
//! must never verify (the input picks the value and the changes).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| buildmesh_fuzz::tamper::run(data));
