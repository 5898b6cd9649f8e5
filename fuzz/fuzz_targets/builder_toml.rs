//! Any text as a builder configuration file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        buildmesh_fuzz::check::builder_toml(text);
    }
});
