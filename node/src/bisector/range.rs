//! The commits a culprit search covers: the first-parent line from a good commit to a bad one,
//! read from a mirror of the repository kept under the node's data directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use buildmesh_protocol::record::MAX_BISECT_COMMITS;

/// How long one git command may take (a first mirror of a large repository takes a while).
const GIT_TIMEOUT: Duration = Duration::from_secs(600);

/// Why the range cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RangeError {
    /// A git command failed.
    #[error("`git {args}` failed: {stderr}")]
    Git { args: String, stderr: String },
    /// A git command could not run or ran too long.
    #[error("cannot run `git {args}`: {reason}")]
    Run { args: String, reason: String },
    /// A commit the caller named is not in the repository.
    #[error("no commit {0} in the repository")]
    NoCommit(String),
    /// The good commit is not on the bad one's first-parent line.
    #[error("{good} is not on the first-parent line of {bad}")]
    NotAncestor { good: String, bad: String },
    /// The range is longer than a search covers.
    #[error("{n} commits between them; a search covers at most {MAX_BISECT_COMMITS}")]
    TooLong { n: usize },
}

/// A mirror of `repo` under `root`, fetched now.
pub async fn mirror(root: &Path, repo: &str) -> Result<PathBuf, RangeError> {
    let name = &buildmesh_protocol::Hash::of(repo.as_bytes()).to_string()[..16];
    let dir = root.join(name);
    if dir.join("HEAD").exists() {
        git(&dir, &["fetch", "--quiet", "--prune", "origin"]).await?;
    } else {
        std::fs::create_dir_all(root).map_err(|e| RangeError::Run {
            args: "clone".into(),
            reason: e.to_string(),
        })?;
        let tmp = root.join(format!("{name}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        let target = tmp.display().to_string();
        git(root, &["clone", "--quiet", "--mirror", repo, &target]).await?;
        std::fs::rename(&tmp, &dir).map_err(|e| RangeError::Run {
            args: "clone".into(),
            reason: e.to_string(),
        })?;
    }
    Ok(dir)
}

/// The first-parent line from `good` to `bad` (full ids, or prefixes git resolves), oldest
/// first, both ends included.
pub async fn first_parent_line(
    mirror: &Path,
    good: &str,
    bad: &str,
) -> Result<Vec<String>, RangeError> {
    let good = resolve(mirror, good).await?;
    let bad = resolve(mirror, bad).await?;
    let listed = git(
        mirror,
        &[
            "rev-list",
            "--first-parent",
            "--reverse",
            &bad,
            &format!("^{good}"),
        ],
    )
    .await?;
    let after: Vec<String> = listed.lines().map(str::to_string).collect();
    // The line must come from `good` itself, not merely from somewhere it reaches.
    let from = match after.first() {
        Some(first) => git(mirror, &["rev-parse", &format!("{first}^1")])
            .await
            .ok()
            .map(|s| s.trim().to_string()),
        None => None,
    };
    if from.as_deref() != Some(good.as_str()) {
        return Err(RangeError::NotAncestor { good, bad });
    }
    let mut shas = vec![good];
    shas.extend(after);
    if shas.len() > MAX_BISECT_COMMITS {
        return Err(RangeError::TooLong { n: shas.len() });
    }
    Ok(shas)
}

/// "Author <mail>" and subject of `sha`, when the mirror has it.
pub async fn describe(mirror: &Path, sha: &str) -> Option<(String, String)> {
    let out = git(mirror, &["log", "-1", "--format=%an <%ae>%n%s", sha])
        .await
        .ok()?;
    let mut lines = out.lines();
    Some((
        lines.next()?.to_string(),
        lines.next().unwrap_or("").to_string(),
    ))
}

async fn resolve(mirror: &Path, name: &str) -> Result<String, RangeError> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(RangeError::NoCommit(name.to_string()));
    }
    git(
        mirror,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{name}^{{commit}}"),
        ],
    )
    .await
    .map(|s| s.trim().to_string())
    .map_err(|_| RangeError::NoCommit(name.to_string()))
}

async fn git(dir: &Path, args: &[&str]) -> Result<String, RangeError> {
    let shown = args.join(" ");
    let run = tokio::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(GIT_TIMEOUT, run)
        .await
        .map_err(|_| RangeError::Run {
            args: shown.clone(),
            reason: format!("timed out after {GIT_TIMEOUT:?}"),
        })?
        .map_err(|e| RangeError::Run {
            args: shown.clone(),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(RangeError::Git {
            args: shown,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
