//! The push payload of a forge's webhook (GitHub, Gitea, Forgejo, Gogs), read from its JSON.
//!
//! Only the parse lives here, where it can be fuzzed without a network stack; checking the
//! request's HMAC signature, which comes first, is the node's (`node/src/sources/webhook.rs`).

use serde::Deserialize;

/// A branch that moved on a forge, as told by a push webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The repository's URLs as the forge gives them (clone, web, SSH, git protocol), in
    /// that order, without empty or repeated entries; never empty.
    pub repo_urls: Vec<String>,
    /// The branch name, without `refs/heads/`.
    pub branch: String,
    /// The commit the branch now points at: 40 or 64 lower-case hex digits.
    pub sha: String,
    /// The first line of the head commit's message, when the payload carries one. Not capped
    /// here: a record carries it through [`crate::record::CommitSeen::subject_of`].
    pub subject: Option<String>,
}

/// A push payload that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MalformedPush(String);

impl Push {
    /// Reads a push payload. `Ok(None)` for a push that asks for no build: to a tag or other
    /// ref, or a branch deletion.
    pub fn from_json(body: &[u8]) -> Result<Option<Push>, MalformedPush> {
        read_push(body)
    }
}

#[derive(Deserialize)]
struct Payload {
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    after: Option<String>,
    repository: Option<Repository>,
    head_commit: Option<Commit>,
    commits: Option<Vec<Commit>>,
}

#[derive(Deserialize)]
struct Repository {
    clone_url: Option<String>,
    html_url: Option<String>,
    ssh_url: Option<String>,
    git_url: Option<String>,
}

#[derive(Deserialize)]
struct Commit {
    message: Option<String>,
}

fn read_push(body: &[u8]) -> Result<Option<Push>, MalformedPush> {
    let malformed = |why: &str| MalformedPush(why.to_owned());
    let payload: Payload = serde_json::from_slice(body)
        .map_err(|e| MalformedPush(format!("not a JSON push payload: {e}")))?;
    let git_ref = payload.git_ref.ok_or_else(|| malformed("no `ref`"))?;
    let after = payload.after.ok_or_else(|| malformed("no `after`"))?;
    let repository = payload
        .repository
        .ok_or_else(|| malformed("no `repository`"))?;

    let mut repo_urls: Vec<String> = Vec::new();
    for url in [
        repository.clone_url,
        repository.html_url,
        repository.ssh_url,
        repository.git_url,
    ]
    .into_iter()
    .flatten()
    {
        let url = url.trim();
        if !url.is_empty() && !repo_urls.iter().any(|u| u == url) {
            repo_urls.push(url.to_owned());
        }
    }
    if repo_urls.is_empty() {
        return Err(malformed("`repository` has no URL"));
    }

    let after = after.trim().to_ascii_lowercase();
    if !matches!(after.len(), 40 | 64) || !after.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed("`after` is not a commit id"));
    }
    let Some(branch) = git_ref
        .strip_prefix("refs/heads/")
        .filter(|b| !b.is_empty())
    else {
        return Ok(None);
    };
    // Forges report a deleted branch as a push whose new commit is all zeros.
    if after.bytes().all(|b| b == b'0') {
        return Ok(None);
    }

    // GitHub names the head commit; Gitea's older payloads only list the commits, oldest
    // first, so the last one is the head.
    let subject = payload
        .head_commit
        .and_then(|c| c.message)
        .and_then(|m| first_line(&m))
        .or_else(|| {
            payload
                .commits
                .and_then(|cs| cs.into_iter().last())
                .and_then(|c| c.message)
                .and_then(|m| first_line(&m))
        });

    Ok(Some(Push {
        repo_urls,
        branch: branch.to_owned(),
        sha: after,
        subject,
    }))
}

fn first_line(message: &str) -> Option<String> {
    let line = message.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_owned())
}

/// Says whether `push` is about the repository a builder names, comparing URLs loosely.
///
/// Remote URLs match when host (ignoring case, user and port) and path (ignoring a trailing
/// `/` or `.git`) agree, so `https://host/o/r`, `git@host:o/r.git` and
/// `ssh://git@host:2222/o/r` are the same repository. Local paths must match exactly.
pub fn url_matches(builder_repo: &str, push: &Push) -> bool {
    let wanted = RepoId::of(builder_repo);
    push.repo_urls.iter().any(|u| RepoId::of(u) == wanted)
}

#[derive(Debug, PartialEq, Eq)]
enum RepoId<'a> {
    Remote { host: String, path: &'a str },
    Local(&'a str),
}

impl<'a> RepoId<'a> {
    fn of(url: &'a str) -> Self {
        let url = url.trim();
        if let Some((scheme, rest)) = url.split_once("://") {
            if scheme.eq_ignore_ascii_case("file") {
                return RepoId::Local(url);
            }
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            return RepoId::remote(authority, path);
        }
        // Git's own rule for scp-like `[user@]host:path`: a colon before any slash.
        if let Some((authority, path)) = url.split_once(':')
            && !authority.is_empty()
            && !authority.contains('/')
        {
            return RepoId::remote(authority, path);
        }
        RepoId::Local(url)
    }

    fn remote(authority: &str, path: &'a str) -> Self {
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        // Forges often serve SSH on another port than HTTPS for the same repository, so the
        // port says nothing about which repository is meant.
        let host = match host_port.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => host_port,
        };
        let path = path.trim_start_matches('/').trim_end_matches('/');
        let path = path
            .strip_suffix(".git")
            .unwrap_or(path)
            .trim_end_matches('/');
        RepoId::Remote {
            host: host.to_ascii_lowercase(),
            path,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn github(git_ref: &str, after: &str) -> Vec<u8> {
        serde_json::json!({
            "ref": git_ref,
            "after": after,
            "repository": {
                "clone_url": "https://github.com/o/r.git",
                "html_url": "https://github.com/o/r",
                "ssh_url": "git@github.com:o/r.git",
            },
            "head_commit": { "message": "Fix the thing\n\nat length" },
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_branch_push_is_read() {
        let p = Push::from_json(&github("refs/heads/main", &SHA.to_uppercase()))
            .unwrap()
            .unwrap();
        assert_eq!((p.branch.as_str(), p.sha.as_str()), ("main", SHA));
        assert_eq!(p.subject.as_deref(), Some("Fix the thing"));
        assert_eq!(p.repo_urls.len(), 3);
        assert!(url_matches("ssh://git@GitHub.com:22/o/r/", &p));
        assert!(!url_matches("https://github.com/o/other", &p));
    }

    #[test]
    fn tags_and_deletions_ask_for_nothing_and_bad_ids_are_refused() {
        assert_eq!(Push::from_json(&github("refs/tags/v1", SHA)).unwrap(), None);
        let zero = "0".repeat(40);
        assert_eq!(
            Push::from_json(&github("refs/heads/x", &zero)).unwrap(),
            None
        );
        assert!(Push::from_json(&github("refs/heads/x", "abc")).is_err());
        assert!(Push::from_json(b"{").is_err());
    }
}
