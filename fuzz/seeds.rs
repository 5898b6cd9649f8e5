//! Writes the seed corpora: valid inputs for every target, from the fixture mesh.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds` (uninstrumented; the fuzz build
//! itself never builds it). Seeds are named for what they are, so that rewriting them after a
//! change to the fixtures replaces them instead of piling up.

use std::fs;
use std::path::{Path, PathBuf};

use buildmesh_fuzz::fixtures::{BUILDER_TOML, DELETE_PUSH, GITEA_PUSH, GITHUB_PUSH, fixtures};
use buildmesh_protocol::codec;
use buildmesh_protocol::wire::Gossip;

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let dir = dir.join(target);
    fs::create_dir_all(&dir).expect("corpus directory");
    fs::write(dir.join(format!("seed-{name}")), bytes).expect("seed written");
}

fn main() {
    let dir: PathBuf = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let f = fixtures();

    for r in &f.records {
        let kind = r.envelope.kind.name();
        write(&dir, "record", kind, &r.bytes);
        let g = Gossip::Record(serde_bytes::ByteBuf::from(r.bytes.clone()));
        write(&dir, "gossip", &format!("record-{kind}"), &g.to_bytes());
    }
    for (i, s) in f.signals.iter().enumerate() {
        write(
            &dir,
            "gossip",
            &format!("signal-{i}"),
            &Gossip::Signal(s.clone()).to_bytes(),
        );
    }
    for (i, d) in f.docs().into_iter().enumerate() {
        write(&dir, "doc", &format!("{}-{i}", d.kind), &d.to_bytes());
    }
    write(&dir, "signed_request", "submit", &f.request.to_bytes());
    for (i, r) in f.wire_requests.iter().enumerate() {
        let bytes = codec::encode("request", r).expect("encodes");
        write(&dir, "wire", &format!("request-{i}"), &bytes);
    }
    for (i, r) in f.wire_responses.iter().enumerate() {
        let bytes = codec::encode("response", r).expect("encodes");
        write(&dir, "wire", &format!("response-{i}"), &bytes);
    }
    let values = f.records.len() + f.docs().len() + f.signals.len() + 1;
    for i in 0..values as u8 {
        write(&dir, "tamper", &format!("{i}-intact"), &[i]);
        write(&dir, "tamper", &format!("{i}-first-bit"), &[i, 0, 0, 1]);
    }
    write(&dir, "builder_toml", "full", BUILDER_TOML.as_bytes());
    let minimal = "version = 1\n[[builder]]\nname = \"b\"\nrepo = \"r\"\nbranches = [\"*\"]\n\
                   [[builder.step]]\nname = \"s\"\nrun = \"true\"\n";
    write(&dir, "builder_toml", "minimal", minimal.as_bytes());
    write(&dir, "builder_toml_edit", "unchanged", b"");
    write(&dir, "builder_toml_edit", "new-builder", &[1, 0, 0, 14]);
    write(&dir, "webhook", "github", GITHUB_PUSH.as_bytes());
    write(&dir, "webhook", "gitea", GITEA_PUSH.as_bytes());
    write(&dir, "webhook", "delete", DELETE_PUSH.as_bytes());
    println!("seeds written under {}", dir.display());
}
