//! A request-response frame's payload, read both as a request and as a response, as the node's
//! network codec reads them (`node/src/network/codec.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    buildmesh_fuzz::check::wire_request(data);
    buildmesh_fuzz::check::wire_response(data);
});
