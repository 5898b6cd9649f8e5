//! Reading and writing the files people handle: secret keys and signed documents.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, bail};
use buildmesh_protocol::SecretKey;
use buildmesh_protocol::docs::{Genesis, SignedDoc, VerifiedGenesis};

/// Reads a secret key file, warning when others may read it.
pub fn read_key(path: &Path) -> anyhow::Result<SecretKey> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "key file is readable by others; chmod 600 it");
    }
    SecretKey::from_file_text(&text).with_context(|| format!("{}", path.display()))
}

/// Writes a new secret key file with mode 0600; never replaces an existing file.
pub fn write_new_key(path: &Path, key: &SecretKey) -> anyhow::Result<()> {
    buildmesh_node::files::write_new_key(path, key).with_context(|| {
        if path.exists() {
            format!("{} exists; refusing to overwrite a key", path.display())
        } else {
            format!("cannot create {}", path.display())
        }
    })
}

/// Reads a signed document file.
pub fn read_doc(path: &Path) -> anyhow::Result<SignedDoc> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    SignedDoc::from_bytes(&bytes)
        .with_context(|| format!("{} is not a buildmesh document", path.display()))
}

/// Reads and checks a genesis file.
pub fn read_genesis(path: &Path) -> anyhow::Result<VerifiedGenesis> {
    let doc = read_doc(path)?;
    Genesis::verify(&doc).with_context(|| format!("genesis {}", path.display()))
}

/// Writes `bytes` to `path` atomically, refusing to replace a file unless `replace`.
pub fn write_atomic(path: &Path, bytes: &[u8], replace: bool) -> anyhow::Result<()> {
    if !replace && path.exists() {
        bail!("{} exists; pass --force to replace it", path.display());
    }
    buildmesh_node::files::write_atomic(path, bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}
