//! Where a worker's builds live and who owns what there: the clone cache (the node's), the
//! builders' directories (the step user's, when there is one), the step user's git
//! configuration, and the locks that give each build a workspace of its own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;

use super::checkout::{CheckoutError, io_err};
use super::isolate::Isolation;

/// The git configuration of the step user's git commands (`GIT_CONFIG_GLOBAL`): the clone cache
/// belongs to the node, and git refuses to read a repository of another user unless told.
pub(crate) const STEP_GITCONFIG: &str = "step.gitconfig";

/// Makes the work directory ready: `work_dir` and the cache readable by the step user, `builds`
/// owned by it, and the step user's git configuration. Idempotent; cheap when all is in place.
pub(crate) fn prepare_work_dir(work_dir: &Path, iso: &Isolation) -> Result<(), CheckoutError> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let open = std::fs::Permissions::from_mode(0o755);
    for dir in [work_dir.to_path_buf(), work_dir.join("cache")] {
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let mode = std::fs::metadata(&dir)
            .map_err(io_err(format!("reading {}", dir.display())))?
            .mode();
        if iso.step_user.is_some() && mode & 0o005 != 0o005 {
            std::fs::set_permissions(&dir, open.clone()).map_err(io_err(format!(
                "opening {} to the step user",
                dir.display()
            )))?;
        }
    }
    let builds = work_dir.join("builds");
    let existing = std::fs::metadata(&builds).ok();
    match &iso.step_user {
        None => {
            std::fs::create_dir_all(&builds)
                .map_err(io_err(format!("creating {}", builds.display())))?;
        }
        Some(user) if existing.as_ref().is_some_and(|m| m.uid() == user.uid) => {}
        Some(user) => {
            // Workspaces of an older version belong to the node: the step user starts afresh.
            let old = work_dir.join(format!("builds.node-{}", std::process::id()));
            if existing.is_some() {
                tracing::info!(dir = %builds.display(), uid = user.uid, "handing the workspaces to the step user");
                std::fs::rename(&builds, &old)
                    .map_err(io_err(format!("moving {} aside", builds.display())))?;
            }
            std::fs::create_dir(&builds)
                .map_err(io_err(format!("creating {}", builds.display())))?;
            // The mode while the node still owns it; then the step user's.
            std::fs::set_permissions(&builds, open.clone())
                .map_err(io_err(format!("setting the mode of {}", builds.display())))?;
            std::os::unix::fs::chown(&builds, Some(user.uid), Some(user.gid)).map_err(io_err(
                format!(
                    "giving {} to the step user {}:{} (the node needs CAP_CHOWN, or do it once by hand)",
                    builds.display(),
                    user.uid,
                    user.gid
                ),
            ))?;
            if existing.is_some()
                && let Err(e) = std::fs::remove_dir_all(&old)
            {
                tracing::warn!(dir = %old.display(), error = %e, "cannot remove the old workspaces");
            }
        }
    }
    let gitconfig = work_dir.join(STEP_GITCONFIG);
    if !gitconfig.exists() {
        let tmp = work_dir.join(format!("{STEP_GITCONFIG}.tmp"));
        std::fs::write(
            &tmp,
            "# Written by buildmesh: the git configuration of the step user's git commands.\n\
             # The clone cache belongs to the node; the workspaces to the step user.\n\
             [safe]\n\tdirectory = *\n",
        )
        .map_err(io_err(format!("writing {}", tmp.display())))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
            .map_err(io_err(format!("setting the mode of {}", tmp.display())))?;
        std::fs::rename(&tmp, &gitconfig)
            .map_err(io_err(format!("writing {}", gitconfig.display())))?;
    }
    Ok(())
}

/// `work_dir/cache/<first 16 hex of blake3(url)>.git`.
pub(crate) fn cache_dir(work_dir: &Path, url: &str) -> PathBuf {
    let hash = buildmesh_protocol::Hash::of(url.as_bytes()).to_string();
    work_dir.join("cache").join(format!("{}.git", &hash[..16]))
}

/// `work_dir/builds/<the builder's safe id>/src` (a name as people write it, "AMD64 Debian root
/// 3.x", is mapped; the id never leaves `builds`).
pub(crate) fn workspace_dir(work_dir: &Path, builder: &str) -> Result<PathBuf, CheckoutError> {
    let id = buildmesh_protocol::builders::safe_id(builder);
    let usable = !id.is_empty() && id != "." && id != ".." && !id.contains(['/', '\0']);
    if !usable {
        return Err(CheckoutError::Invalid(format!(
            "builder name `{builder}` cannot name a directory"
        )));
    }
    Ok(work_dir.join("builds").join(id).join("src"))
}

/// A lock per directory: concurrent builds of one repository share its cache, and git does not
/// like two fetches into one repository at once.
pub(super) fn lock_for(dir: &Path) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(dir.to_path_buf())
        .or_default()
        .clone()
}

pub(crate) async fn lock_dir(
    dir: &Path,
    cancel: &CancellationToken,
) -> Result<OwnedMutexGuard<()>, CheckoutError> {
    let lock = lock_for(dir);
    tokio::select! {
        guard = lock.lock_owned() => Ok(guard),
        () = cancel.cancelled() => Err(CheckoutError::Cancelled),
    }
}

/// How many workspaces one builder may have on a worker: one per build it runs at once.
const MAX_WORKSPACES: usize = 16;

/// Holds a workspace of a builder for the whole build: two builds must never check out over
/// each other, so each build running at once gets its own (`src`, `src-1`, `src-2` …), and a
/// build beyond `MAX_WORKSPACES` waits for the first.
pub(crate) async fn lock_workspace(
    work_dir: &Path,
    builder: &str,
    cancel: &CancellationToken,
) -> Result<(PathBuf, OwnedMutexGuard<()>), CheckoutError> {
    let first = workspace_dir(work_dir, builder)?;
    for slot in 0..MAX_WORKSPACES {
        let dir = if slot == 0 {
            first.clone()
        } else {
            first.with_file_name(format!("src-{slot}"))
        };
        if let Ok(guard) = lock_for(&dir).try_lock_owned() {
            return Ok((dir, guard));
        }
    }
    let guard = lock_dir(&first, cancel).await?;
    Ok((first, guard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_is_named_by_the_url_hash() {
        let d = cache_dir(Path::new("/w"), "https://example.org/x.git");
        let name = d.file_name().unwrap().to_str().unwrap();
        assert_eq!(name.len(), 16 + 4);
        assert!(name.ends_with(".git"));
        assert_eq!(d.parent().unwrap(), Path::new("/w/cache"));
        assert_ne!(d, cache_dir(Path::new("/w"), "https://example.org/y.git"));
    }

    #[test]
    fn names_that_escape_are_mapped_inside_builds() {
        let w = Path::new("/w");
        for name in [
            "..",
            ".",
            "a/b",
            "../../etc",
            "AMD64 Debian root 3.x",
            "x\\y",
        ] {
            let d = workspace_dir(w, name).expect("every name gets a directory");
            assert_eq!(
                d.parent().unwrap().parent().unwrap(),
                w.join("builds"),
                "{name}"
            );
            assert_eq!(d.file_name().unwrap(), "src");
        }
        assert_ne!(
            workspace_dir(w, "a/b").unwrap(),
            workspace_dir(w, "a b").unwrap(),
            "two names share a workspace"
        );
        // A name that was valid before keeps its directory.
        assert_eq!(
            workspace_dir(w, "linux-3.x").unwrap(),
            Path::new("/w/builds/linux-3.x/src")
        );
    }
}
