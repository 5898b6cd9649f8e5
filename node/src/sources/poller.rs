//! A git poller's pieces: asking a remote for its branches, and remembering what was seen so
//! that only branches that appeared or moved are announced.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Command;

/// Why asking a remote for its branches failed.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// Git ran and failed; `url` has any password replaced by `***`.
    #[error("git ls-remote {url} failed: {stderr}")]
    Git {
        /// The remote asked, with any password hidden.
        url: String,
        /// What git said on its standard error (or how it ended, when it said nothing).
        stderr: String,
    },
    /// Git did not answer in time and was killed.
    #[error("git ls-remote {url} did not answer within {}", humantime::format_duration(*timeout))]
    Timeout {
        /// The remote asked, with any password hidden.
        url: String,
        /// How long it was given.
        timeout: Duration,
    },
    /// Git could not be started (not installed, not on `PATH`, out of processes).
    #[error("cannot run git")]
    Spawn(#[source] std::io::Error),
}

/// `git ls-remote --heads URL` with a timeout: branch name -> sha.
///
/// Git never prompts for credentials; a remote that wants some fails instead. On timeout
/// git and everything it started are killed.
pub async fn ls_remote(
    url: &str,
    timeout: Duration,
) -> Result<BTreeMap<String, String>, PollError> {
    let mut cmd = Command::new("git");
    // `--` so that a URL starting with `-` is never taken for an option such as
    // `--upload-pack=<command>`.
    cmd.args(["ls-remote", "--heads", "--", url])
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Git leaves the talking to children (ssh, git-remote-https) that outlive a killed
        // git; a group of their own lets them all be killed together.
        .process_group(0);
    let child = cmd.spawn().map_err(PollError::Spawn)?;
    let pid = child.id();
    let mut output = std::pin::pin!(child.wait_with_output());
    // Declared after `output` so it is dropped first, while git is not yet reaped and its
    // group id cannot have been reused.
    let mut group = KillGroupOnDrop(pid);
    let result = tokio::time::timeout(timeout, &mut output).await;
    let output = match result {
        Ok(Ok(output)) => {
            group.disarm();
            output
        }
        Ok(Err(e)) => return Err(PollError::Spawn(e)),
        Err(_) => {
            tracing::debug!(url = %redact(url), ?timeout, "git ls-remote timed out");
            return Err(PollError::Timeout {
                url: redact(url),
                timeout,
            });
        }
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        let stderr = if stderr.is_empty() {
            output.status.to_string()
        } else {
            stderr
        };
        tracing::debug!(url = %redact(url), %stderr, "git ls-remote failed");
        return Err(PollError::Git {
            url: redact(url),
            stderr,
        });
    }
    let heads = parse_heads(&String::from_utf8_lossy(&output.stdout));
    tracing::debug!(url = %redact(url), branches = heads.len(), "git ls-remote answered");
    Ok(heads)
}

/// Kills a process group when dropped, unless disarmed.
struct KillGroupOnDrop(Option<u32>);

impl KillGroupOnDrop {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            // ESRCH only means everyone in the group is already gone.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

fn parse_heads(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|line| {
            let (sha, name) = line.split_once('\t')?;
            let branch = name.strip_prefix("refs/heads/")?;
            let is_sha = matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit());
            (is_sha && !branch.is_empty()).then(|| (branch.to_owned(), sha.to_ascii_lowercase()))
        })
        .collect()
}

/// `url` with the password of `scheme://user:password@host/...` replaced by `***`, for logs
/// and errors.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or(userinfo);
            let hidden = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_owned()
            };
            format!("{scheme}://{hidden}@{host}{}", &rest[authority.len()..])
        }
        None => url.to_owned(),
    }
}

/// Remembers the last sha seen per (repo, branch) and says what changed.
#[derive(Debug, Clone, Default)]
pub struct PollState {
    /// repo -> branch -> sha.
    seen: BTreeMap<String, BTreeMap<String, String>>,
}

impl PollState {
    /// An empty memory: the first answer for each repository announces all its branches.
    pub fn new() -> Self {
        Self::default()
    }

    /// Seeds what is already known (so a restart does not re-announce everything).
    pub fn remember(&mut self, repo: &str, branch: &str, sha: &str) {
        self.seen
            .entry(repo.to_owned())
            .or_default()
            .insert(branch.to_owned(), sha.to_ascii_lowercase());
    }

    /// The last sha seen for `branch` of `repo`, if any.
    pub fn last_seen(&self, repo: &str, branch: &str) -> Option<&str> {
        self.seen.get(repo)?.get(branch).map(String::as_str)
    }

    /// Given a fresh ls-remote answer for `repo`, returns (branch, sha) pairs that are new or
    /// moved, among branches accepted by `wanted` (e.g. a glob filter), and remembers them.
    ///
    /// Branches that are gone from the answer, or no longer wanted, are forgotten: short-lived
    /// branches would otherwise grow the memory forever, and one that comes back is new.
    pub fn changes(
        &mut self,
        repo: &str,
        heads: &BTreeMap<String, String>,
        wanted: impl Fn(&str) -> bool,
    ) -> Vec<(String, String)> {
        let known = self.seen.entry(repo.to_owned()).or_default();
        known.retain(|branch, _| heads.contains_key(branch) && wanted(branch));
        let mut changed = Vec::new();
        for (branch, sha) in heads {
            if !wanted(branch) || known.get(branch) == Some(sha) {
                continue;
            }
            tracing::debug!(%repo, %branch, %sha, "branch moved");
            known.insert(branch.clone(), sha.clone());
            changed.push((branch.clone(), sha.clone()));
        }
        if known.is_empty() {
            self.seen.remove(repo);
        }
        changed
    }
}
