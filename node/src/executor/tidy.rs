//! Workspaces and clones that no configured builder uses any more: a builder removed or
//! renamed leaves `builds/<its id>` behind, a repository no builder builds leaves its clone in
//! `cache/`. A worker deletes them when a builder configuration comes into force (and so at
//! every start), so its disk follows the builders it has, not every builder it ever had.
//!
//! A workspace a build holds is left for the next time; so is a clone being fetched. Workspaces
//! belong to the step user when there is one, and are deleted as that user.

use std::collections::BTreeSet;
use std::path::Path;

use buildmesh_protocol::Timestamp;
use buildmesh_protocol::builders::{BuilderConfig, safe_id};
use tokio_util::sync::CancellationToken;

use super::checkout::Checkout;
use super::workdir::{cache_dir, lock_for};
use super::{ExecutorConfig, GIT_TIMEOUT};
use crate::executor::capture::Capture;

/// What [`tidy`] deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tidied {
    /// Builders' directories (their workspaces, `HOME` and `TMPDIR`).
    pub workspaces: Vec<String>,
    /// Repository clones.
    pub clones: Vec<String>,
}

/// Deletes the workspaces and clones of `config.work_dir` that no builder of `builders` uses.
pub async fn tidy(config: &ExecutorConfig, builders: &BuilderConfig) -> Tidied {
    let mut out = Tidied::default();
    let Ok(work_dir) = std::path::absolute(&config.work_dir) else {
        return out;
    };
    let ids: BTreeSet<String> = builders.builders.iter().map(|b| safe_id(&b.name)).collect();
    let clones: BTreeSet<std::ffi::OsString> = builders
        .builders
        .iter()
        .filter_map(|b| cache_dir(&work_dir, &b.repo).file_name().map(Into::into))
        .collect();
    for (dir, name) in entries(&work_dir.join("builds")) {
        if ids.contains(&name) || !dir.is_dir() {
            continue;
        }
        // Every workspace of the builder, held until it is gone, so that no build checks out
        // into it meanwhile; one a build holds keeps the whole directory for now.
        let slots = entries(&dir)
            .into_iter()
            .filter(|(_, n)| n.starts_with("src"))
            .map(|(p, _)| p);
        let guards: Option<Vec<_>> = slots.map(|s| lock_for(&s).try_lock_owned().ok()).collect();
        if guards.is_none() {
            continue;
        }
        match remove(config, &work_dir, &dir).await {
            Ok(()) => out.workspaces.push(name),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot delete an unused builder's directory")
            }
        }
    }
    for (dir, name) in entries(&work_dir.join("cache")) {
        let unused = dir.extension().is_some_and(|e| e == "git")
            && dir.file_name().is_some_and(|n| !clones.contains(n));
        if !unused {
            continue;
        }
        let Ok(_guard) = lock_for(&dir).try_lock_owned() else {
            continue;
        };
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => out.clones.push(name),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot delete an unused clone")
            }
        }
    }
    if out != Tidied::default() {
        tracing::info!(workspaces = ?out.workspaces, clones = ?out.clones, "deleted what no configured builder uses");
    }
    out
}

// The entries of `dir` with their names (none if it cannot be read).
fn entries(dir: &Path) -> Vec<(std::path::PathBuf, String)> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    read.flatten()
        .map(|e| (e.path(), e.file_name().to_string_lossy().into_owned()))
        .collect()
}

// Deletes a builder's directory: as the step user, who owns what is in it, when there is one
// (the checkout's own removal, which the node does itself when there is none).
async fn remove(config: &ExecutorConfig, work_dir: &Path, dir: &Path) -> Result<(), String> {
    let cancel = CancellationToken::new();
    let checkout = Checkout {
        work_dir,
        supervisor: config.supervisor.as_deref(),
        timeout: config.scaled(GIT_TIMEOUT),
        url: "",
        branch: "",
        sha: "",
        off_branch_ok: false,
        announced: Timestamp(0),
        isolation: &config.isolation,
        home: work_dir,
        tmp: work_dir,
        cancel: &cancel,
    };
    let mut log = Capture::new(&[]);
    checkout
        .remove_in_workspace(dir, &mut log)
        .await
        .map_err(|e| e.to_string())
}
