//! A valid builder configuration file with edits the input describes, so that most inputs stay
//! close enough to valid to reach the checks after the TOML parse.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| buildmesh_fuzz::toml_edit::run(data));
