//! Push webhooks from GitHub, Gitea, Forgejo and Gogs.
//!
//! Every forge here signs the raw request body with HMAC-SHA256 under a secret shared with
//! us. The signature is checked before the body is even parsed as JSON, so that nobody who
//! lacks the secret can make a node read (or act on) what they send.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// A branch that moved on a forge, as told by a push webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The repository's URLs as the forge gives them (clone, web, SSH, git protocol), in
    /// that order, without empty or repeated entries; never empty.
    pub repo_urls: Vec<String>,
    /// The branch name, without `refs/heads/`.
    pub branch: String,
    /// The commit the branch now points at.
    pub sha: String,
    /// The first line of the head commit's message, when the payload carries one.
    pub subject: Option<String>,
}

/// The forge a webhook came from, told by its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// GitHub: `x-github-event`, signed in `x-hub-signature-256` as `sha256=<hex>`.
    GitHub,
    /// Gitea: `x-gitea-event`, signed in `x-gitea-signature` as bare hex.
    Gitea,
    /// Forgejo: `x-forgejo-event`, signed in `x-forgejo-signature` as bare hex.
    Forgejo,
    /// Gogs: `x-gogs-event`, signed in `x-gogs-signature` as bare hex.
    Gogs,
}

impl Provider {
    // Gitea also sends Gogs' and GitHub's event headers for compatibility, and Forgejo
    // sends Gitea's, so the most specific header has to be looked for first.
    const DETECTION_ORDER: [Provider; 4] = [
        Provider::Forgejo,
        Provider::Gitea,
        Provider::Gogs,
        Provider::GitHub,
    ];

    /// Finds the provider whose event header is present; returns it with the event's name.
    pub fn detect(header: impl Fn(&str) -> Option<String>) -> Option<(Provider, String)> {
        Self::DETECTION_ORDER.into_iter().find_map(|p| {
            header(p.event_header()).map(|event| (p, event.trim().to_ascii_lowercase()))
        })
    }

    /// The lower-case name of the header that names the event.
    pub fn event_header(self) -> &'static str {
        match self {
            Provider::GitHub => "x-github-event",
            Provider::Gitea => "x-gitea-event",
            Provider::Forgejo => "x-forgejo-event",
            Provider::Gogs => "x-gogs-event",
        }
    }

    /// The lower-case name of the header that carries the body's HMAC-SHA256.
    pub fn signature_header(self) -> &'static str {
        match self {
            Provider::GitHub => "x-hub-signature-256",
            Provider::Gitea => "x-gitea-signature",
            Provider::Forgejo => "x-forgejo-signature",
            Provider::Gogs => "x-gogs-signature",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Provider::GitHub => "github",
            Provider::Gitea => "gitea",
            Provider::Forgejo => "forgejo",
            Provider::Gogs => "gogs",
        })
    }
}

/// Why a webhook request was refused.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// None of the known event headers is present, so there is no telling how it is signed.
    #[error(
        "not a known forge webhook: no x-github-event, x-gitea-event, x-forgejo-event or \
         x-gogs-event header"
    )]
    UnknownProvider,
    /// The provider's signature header is absent.
    #[error("the webhook is not signed")]
    MissingSignature,
    /// The signature does not match the body under our secret, is not hex, or we have no
    /// secret to check it with.
    #[error("the webhook signature does not match")]
    BadSignature,
    /// The body is authentic but is not a push payload we can read.
    #[error("malformed push payload: {0}")]
    Malformed(String),
}

/// Checks the HMAC signature with `secret` and parses a push payload. `header` looks up a
/// request header by lower-case name.
///
/// Returns `Ok(None)` for authentic requests that ask for no build: pings, other events,
/// tag pushes and branch deletions.
pub fn parse_push(
    header: impl Fn(&str) -> Option<String>,
    body: &[u8],
    secret: &[u8],
) -> Result<Option<Push>, WebhookError> {
    let Some((provider, event)) = Provider::detect(&header) else {
        tracing::debug!("webhook from no known forge");
        return Err(WebhookError::UnknownProvider);
    };
    if let Err(e) = verify(provider, &header, body, secret) {
        tracing::debug!(%provider, %event, error = %e, "webhook refused");
        return Err(e);
    }
    if event != "push" {
        tracing::debug!(%provider, %event, "webhook event ignored");
        return Ok(None);
    }
    // GitHub can be set to send `payload=<urlencoded JSON>`; saying so beats a JSON error.
    if header("content-type").is_some_and(|t| {
        t.trim_start()
            .starts_with("application/x-www-form-urlencoded")
    }) {
        return Err(WebhookError::Malformed(
            "form-encoded payload; set the webhook's content type to application/json".into(),
        ));
    }
    let push = read_push(body)?;
    match &push {
        Some(p) => tracing::debug!(%provider, branch = %p.branch, sha = %p.sha, "push received"),
        None => tracing::debug!(%provider, "push to a tag, deleted branch or other ref ignored"),
    }
    Ok(push)
}

fn verify(
    provider: Provider,
    header: &impl Fn(&str) -> Option<String>,
    body: &[u8],
    secret: &[u8],
) -> Result<(), WebhookError> {
    if secret.is_empty() {
        // An empty key is public knowledge: anyone could sign with it.
        tracing::warn!(%provider, "webhook secret is empty; refusing every webhook");
        return Err(WebhookError::BadSignature);
    }
    let value = header(provider.signature_header()).ok_or(WebhookError::MissingSignature)?;
    let value = value.trim();
    let hex_tag = match provider {
        Provider::GitHub => value
            .strip_prefix("sha256=")
            .ok_or(WebhookError::BadSignature)?,
        Provider::Gitea | Provider::Forgejo | Provider::Gogs => value,
    };
    let tag = hex::decode(hex_tag).map_err(|_| WebhookError::BadSignature)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| WebhookError::BadSignature)?;
    mac.update(body);
    // Constant time, so the comparison leaks nothing about how much of a guess was right.
    mac.verify_slice(&tag)
        .map_err(|_| WebhookError::BadSignature)
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

fn read_push(body: &[u8]) -> Result<Option<Push>, WebhookError> {
    let malformed = |why: &str| WebhookError::Malformed(why.to_owned());
    let payload: Payload = serde_json::from_slice(body)
        .map_err(|e| WebhookError::Malformed(format!("not a JSON push payload: {e}")))?;
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
