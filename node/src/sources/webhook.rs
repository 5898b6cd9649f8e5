//! Push webhooks from GitHub, Gitea, Forgejo and Gogs.
//!
//! Every forge here signs the raw request body with HMAC-SHA256 under a secret shared with
//! us. The signature is checked before the body is even parsed as JSON, so that nobody who
//! lacks the secret can make a node read (or act on) what they send. The payload itself is read
//! by [`buildmesh_protocol::webhook`], where it is fuzzed.

use std::fmt;

pub use buildmesh_protocol::webhook::{Push, url_matches};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

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
    let push = Push::from_json(body).map_err(|e| WebhookError::Malformed(e.to_string()))?;
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
