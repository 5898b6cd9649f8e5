//! Writing the files people handle: secret keys (mode 0600, never replaced) and documents
//! (atomically, so a failed write leaves the earlier file whole).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use buildmesh_protocol::SecretKey;

/// Writes a new secret key file with mode 0600; fails if the file exists.
pub fn write_new_key(path: &Path, key: &SecretKey) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(key.to_file_text().as_bytes())?;
    f.sync_all()
}

/// Writes `bytes` to `path` through a temporary file in the same directory, fsynced, then
/// renamed over the target.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
