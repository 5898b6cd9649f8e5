//! Change sources: signed push webhooks and the git poller, against real payload shapes and
//! real git repositories.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use buildmesh_node::sources::poller::{PollError, PollState, ls_remote};
use buildmesh_node::sources::webhook::{Provider, Push, WebhookError, parse_push, url_matches};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

const SECRET: &[u8] = b"s3cr3t-shared-with-the-forge";
const SHA_A: &str = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c";
const SHA_B: &str = "bffeb74224043ba2feb48d137756c8a9331c449a";
const ZERO: &str = "0000000000000000000000000000000000000000";

// ---------------------------------------------------------------------------------------
// Webhooks

fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Modelled on GitHub's documented `push` payload (trimmed).
fn github_push(git_ref: &str, after: &str) -> Vec<u8> {
    serde_json::json!({
        "ref": git_ref,
        "before": SHA_A,
        "after": after,
        "created": false,
        "deleted": after == ZERO,
        "forced": false,
        "base_ref": null,
        "compare": format!("https://github.com/Octo-Org/hello-world/compare/{SHA_A}...{after}"),
        "commits": [
            {"id": SHA_A, "message": "Older commit", "distinct": true},
            {"id": after, "message": "Fix the frobnicator\n\nIt was frobbing twice.", "distinct": true}
        ],
        "head_commit": {
            "id": after,
            "tree_id": "f9d2a07e9488b91af2641b26b9407fe22a451433",
            "message": "Fix the frobnicator\n\nIt was frobbing twice.",
            "timestamp": "2024-05-01T12:00:00+02:00",
            "author": {"name": "Mona", "email": "mona@example.com", "username": "mona"}
        },
        "repository": {
            "id": 1296269,
            "name": "hello-world",
            "full_name": "Octo-Org/hello-world",
            "private": false,
            "html_url": "https://github.com/Octo-Org/hello-world",
            "git_url": "git://github.com/Octo-Org/hello-world.git",
            "ssh_url": "git@github.com:Octo-Org/hello-world.git",
            "clone_url": "https://github.com/Octo-Org/hello-world.git",
            "default_branch": "main"
        },
        "pusher": {"name": "mona", "email": "mona@example.com"},
        "sender": {"login": "mona", "id": 1}
    })
    .to_string()
    .into_bytes()
}

/// Modelled on Gitea's documented `push` payload: no `head_commit`, commits oldest first.
fn gitea_push(git_ref: &str, after: &str) -> Vec<u8> {
    serde_json::json!({
        "secret": "",
        "ref": git_ref,
        "before": SHA_A,
        "after": after,
        "compare_url": format!("http://localhost:3000/gitea/webhooks/compare/{SHA_A}...{after}"),
        "commits": [
            {
                "id": SHA_A,
                "message": "First\n",
                "url": format!("http://localhost:3000/gitea/webhooks/commit/{SHA_A}"),
                "author": {"name": "Gitea", "email": "someone@gitea.io", "username": "gitea"},
                "timestamp": "2017-03-13T13:52:11-04:00"
            },
            {
                "id": after,
                "message": "Webhooks Yay!\n",
                "url": format!("http://localhost:3000/gitea/webhooks/commit/{after}"),
                "author": {"name": "Gitea", "email": "someone@gitea.io", "username": "gitea"},
                "timestamp": "2017-03-13T13:52:11-04:00"
            }
        ],
        "repository": {
            "id": 140,
            "owner": {"id": 1, "login": "gitea", "full_name": "Gitea"},
            "name": "webhooks",
            "full_name": "gitea/webhooks",
            "private": false,
            "fork": false,
            "html_url": "http://localhost:3000/gitea/webhooks",
            "ssh_url": "ssh://gitea@localhost:2222/gitea/webhooks.git",
            "clone_url": "http://localhost:3000/gitea/webhooks.git",
            "default_branch": "master"
        },
        "pusher": {"id": 1, "login": "gitea", "email": "someone@gitea.io"},
        "sender": {"id": 1, "login": "gitea", "email": "someone@gitea.io"}
    })
    .to_string()
    .into_bytes()
}

type Headers = HashMap<&'static str, String>;

fn lookup(headers: &Headers) -> impl Fn(&str) -> Option<String> + '_ {
    |name| headers.get(name).cloned()
}

fn github_headers(event: &str, body: &[u8], secret: &[u8]) -> Headers {
    HashMap::from([
        ("x-github-event", event.to_owned()),
        (
            "x-github-delivery",
            "72d3162e-cc78-11e3-81ab-4c9367dc0958".to_owned(),
        ),
        ("content-type", "application/json".to_owned()),
        (
            "x-hub-signature-256",
            format!("sha256={}", sign(secret, body)),
        ),
    ])
}

/// What Gitea really sends: its own headers plus Gogs' and GitHub's for compatibility.
fn gitea_headers(event: &str, body: &[u8], secret: &[u8]) -> Headers {
    let sig = sign(secret, body);
    HashMap::from([
        ("x-gitea-event", event.to_owned()),
        ("x-gitea-signature", sig.clone()),
        ("x-gogs-event", event.to_owned()),
        ("x-gogs-signature", sig.clone()),
        ("x-github-event", event.to_owned()),
        ("x-hub-signature-256", format!("sha256={sig}")),
        ("content-type", "application/json".to_owned()),
    ])
}

#[test]
fn github_push_with_good_signature() {
    let body = github_push("refs/heads/main", SHA_B);
    let headers = github_headers("push", &body, SECRET);
    let push = parse_push(lookup(&headers), &body, SECRET)
        .unwrap()
        .unwrap();
    assert_eq!(
        push,
        Push {
            repo_urls: vec![
                "https://github.com/Octo-Org/hello-world.git".into(),
                "https://github.com/Octo-Org/hello-world".into(),
                "git@github.com:Octo-Org/hello-world.git".into(),
                "git://github.com/Octo-Org/hello-world.git".into(),
            ],
            branch: "main".into(),
            sha: SHA_B.into(),
            subject: Some("Fix the frobnicator".into()),
        }
    );
}

#[test]
fn gitea_push_with_good_signature() {
    let body = gitea_push("refs/heads/feature/x", SHA_B);
    let headers = gitea_headers("push", &body, SECRET);
    assert_eq!(
        Provider::detect(lookup(&headers)),
        Some((Provider::Gitea, "push".into()))
    );
    let push = parse_push(lookup(&headers), &body, SECRET)
        .unwrap()
        .unwrap();
    assert_eq!(push.branch, "feature/x");
    assert_eq!(push.sha, SHA_B);
    assert_eq!(
        push.repo_urls,
        [
            "http://localhost:3000/gitea/webhooks.git",
            "http://localhost:3000/gitea/webhooks",
            "ssh://gitea@localhost:2222/gitea/webhooks.git",
        ]
    );
    assert_eq!(push.subject.as_deref(), Some("Webhooks Yay!"));
}

#[test]
fn forgejo_and_gogs_signatures() {
    let body = gitea_push("refs/heads/main", SHA_B);
    let sig = sign(SECRET, &body);
    let forgejo = HashMap::from([
        ("x-forgejo-event", "push".to_owned()),
        ("x-forgejo-signature", sig.clone()),
        ("x-gitea-event", "push".to_owned()),
        // Forgejo is told by its own header; a wrong Gitea one must not be what is checked.
        ("x-gitea-signature", "00".to_owned()),
    ]);
    assert_eq!(
        Provider::detect(lookup(&forgejo)).map(|(p, _)| p),
        Some(Provider::Forgejo)
    );
    assert!(
        parse_push(lookup(&forgejo), &body, SECRET)
            .unwrap()
            .is_some()
    );

    let gogs = HashMap::from([
        ("x-gogs-event", "push".to_owned()),
        ("x-gogs-signature", sig.to_uppercase()),
    ]);
    assert!(parse_push(lookup(&gogs), &body, SECRET).unwrap().is_some());
}

#[test]
fn wrong_secret_is_refused() {
    let body = github_push("refs/heads/main", SHA_B);
    let headers = github_headers("push", &body, b"not-the-secret");
    let err = parse_push(lookup(&headers), &body, SECRET).unwrap_err();
    assert!(matches!(err, WebhookError::BadSignature), "{err:?}");

    let body = gitea_push("refs/heads/main", SHA_B);
    let headers = gitea_headers("push", &body, b"not-the-secret");
    let err = parse_push(lookup(&headers), &body, SECRET).unwrap_err();
    assert!(matches!(err, WebhookError::BadSignature), "{err:?}");
}

#[test]
fn body_changed_after_signing_is_refused() {
    let body = github_push("refs/heads/main", SHA_B);
    let headers = github_headers("push", &body, SECRET);
    let tampered = String::from_utf8(body)
        .unwrap()
        .replace("refs/heads/main", "refs/heads/evil")
        .into_bytes();
    let err = parse_push(lookup(&headers), &tampered, SECRET).unwrap_err();
    assert!(matches!(err, WebhookError::BadSignature), "{err:?}");

    // Even one byte of trailing whitespace changes the body that was signed.
    let body = gitea_push("refs/heads/main", SHA_B);
    let headers = gitea_headers("push", &body, SECRET);
    let mut padded = body.clone();
    padded.push(b'\n');
    let err = parse_push(lookup(&headers), &padded, SECRET).unwrap_err();
    assert!(matches!(err, WebhookError::BadSignature), "{err:?}");
}

#[test]
fn missing_signature_is_refused() {
    let body = github_push("refs/heads/main", SHA_B);
    let mut headers = github_headers("push", &body, SECRET);
    headers.remove("x-hub-signature-256");
    let err = parse_push(lookup(&headers), &body, SECRET).unwrap_err();
    assert!(matches!(err, WebhookError::MissingSignature), "{err:?}");

    let body = gitea_push("refs/heads/main", SHA_B);
    let mut headers = gitea_headers("push", &body, SECRET);
    headers.remove("x-gitea-signature");
    let err = parse_push(lookup(&headers), &body, SECRET).unwrap_err();
    assert!(matches!(err, WebhookError::MissingSignature), "{err:?}");
}

#[test]
fn malformed_signatures_and_empty_secret_are_refused() {
    let body = github_push("refs/heads/main", SHA_B);
    let good = github_headers("push", &body, SECRET);
    for bad in [
        sign(SECRET, &body),                              // no `sha256=` prefix
        format!("sha1={}", sign(SECRET, &body)),          // another algorithm's prefix
        "sha256=not-hex".to_owned(),                      // not hex
        format!("sha256={}", &sign(SECRET, &body)[..32]), // truncated
        String::new(),
    ] {
        let mut headers = good.clone();
        headers.insert("x-hub-signature-256", bad.clone());
        let err = parse_push(lookup(&headers), &body, SECRET).unwrap_err();
        assert!(matches!(err, WebhookError::BadSignature), "{bad}: {err:?}");
    }

    // Signed with the empty key, which anyone could do.
    let headers = github_headers("push", &body, b"");
    let err = parse_push(lookup(&headers), &body, b"").unwrap_err();
    assert!(matches!(err, WebhookError::BadSignature), "{err:?}");
}

#[test]
fn no_event_header_is_refused() {
    let body = github_push("refs/heads/main", SHA_B);
    let mut headers = github_headers("push", &body, SECRET);
    headers.remove("x-github-event");
    let err = parse_push(lookup(&headers), &body, SECRET).unwrap_err();
    assert!(matches!(err, WebhookError::UnknownProvider), "{err:?}");
}

#[test]
fn tag_push_is_ignored() {
    let body = github_push("refs/tags/v1.0.0", SHA_B);
    let headers = github_headers("push", &body, SECRET);
    assert_eq!(parse_push(lookup(&headers), &body, SECRET).unwrap(), None);

    let body = gitea_push("refs/tags/v1.0.0", SHA_B);
    let headers = gitea_headers("push", &body, SECRET);
    assert_eq!(parse_push(lookup(&headers), &body, SECRET).unwrap(), None);
}

#[test]
fn branch_deletion_is_ignored() {
    let body = github_push("refs/heads/gone", ZERO);
    let headers = github_headers("push", &body, SECRET);
    assert_eq!(parse_push(lookup(&headers), &body, SECRET).unwrap(), None);

    let body = gitea_push("refs/heads/gone", ZERO);
    let headers = gitea_headers("push", &body, SECRET);
    assert_eq!(parse_push(lookup(&headers), &body, SECRET).unwrap(), None);
}

#[test]
fn ping_and_other_events_are_ignored() {
    let body = serde_json::json!({
        "zen": "Keep it logically awesome.",
        "hook_id": 123,
        "hook": {"type": "Repository", "id": 123, "events": ["push"], "active": true},
        "repository": {"full_name": "Octo-Org/hello-world"}
    })
    .to_string()
    .into_bytes();
    let headers = github_headers("ping", &body, SECRET);
    assert_eq!(parse_push(lookup(&headers), &body, SECRET).unwrap(), None);

    let headers = gitea_headers("pull_request", &body, SECRET);
    assert_eq!(parse_push(lookup(&headers), &body, SECRET).unwrap(), None);

    // Ignoring still requires authenticity.
    let headers = github_headers("ping", &body, b"not-the-secret");
    assert!(matches!(
        parse_push(lookup(&headers), &body, SECRET),
        Err(WebhookError::BadSignature)
    ));
}

#[test]
fn malformed_payloads() {
    let full: serde_json::Value =
        serde_json::from_slice(&github_push("refs/heads/main", SHA_B)).unwrap();
    let mut cases: Vec<Vec<u8>> = vec![b"{not json".to_vec(), b"[]".to_vec()];
    for field in ["ref", "after", "repository"] {
        let mut v = full.clone();
        v.as_object_mut().unwrap().remove(field);
        cases.push(v.to_string().into_bytes());
    }
    let mut no_urls = full.clone();
    no_urls["repository"] =
        serde_json::json!({"full_name": "Octo-Org/hello-world", "clone_url": ""});
    cases.push(no_urls.to_string().into_bytes());
    let mut bad_sha = full.clone();
    bad_sha["after"] = "main".into();
    cases.push(bad_sha.to_string().into_bytes());

    for body in cases {
        let headers = github_headers("push", &body, SECRET);
        let err = parse_push(lookup(&headers), &body, SECRET).unwrap_err();
        assert!(
            matches!(err, WebhookError::Malformed(_)),
            "{}: {err:?}",
            String::from_utf8_lossy(&body)
        );
    }
}

#[test]
fn urls_match_loosely() {
    let push = Push {
        repo_urls: vec![
            "https://github.com/Octo-Org/hello-world.git".into(),
            "git@github.com:Octo-Org/hello-world.git".into(),
        ],
        branch: "main".into(),
        sha: SHA_B.into(),
        subject: None,
    };
    for same in [
        "https://github.com/Octo-Org/hello-world",
        "https://GitHub.COM/Octo-Org/hello-world/",
        "https://github.com/Octo-Org/hello-world.git/",
        "http://github.com/Octo-Org/hello-world",
        "git@github.com:Octo-Org/hello-world",
        "ssh://git@github.com/Octo-Org/hello-world.git",
        "ssh://git@github.com:22/Octo-Org/hello-world.git",
        "https://token@github.com/Octo-Org/hello-world.git",
    ] {
        assert!(url_matches(same, &push), "{same}");
    }
    for other in [
        "https://github.com/Octo-Org/hello-world-2",
        "https://github.com/Octo-Org/other",
        "https://gitlab.com/Octo-Org/hello-world",
        "git@github.com:Someone/hello-world.git",
        "/srv/git/hello-world",
    ] {
        assert!(!url_matches(other, &push), "{other}");
    }

    let gitea = Push {
        repo_urls: vec!["ssh://gitea@localhost:2222/gitea/webhooks.git".into()],
        ..push.clone()
    };
    assert!(url_matches("http://localhost:3000/gitea/webhooks", &gitea));

    let local = Push {
        repo_urls: vec!["/srv/git/hello-world".into()],
        ..push
    };
    assert!(url_matches("/srv/git/hello-world", &local));
    assert!(!url_matches("/srv/git/hello-world/", &local));
    assert!(!url_matches("/srv/git/Hello-World", &local));
}

// ---------------------------------------------------------------------------------------
// Poller

const TIMEOUT: Duration = Duration::from_secs(30);

/// Runs git in `dir`, isolated from the user's and system's configuration, and returns its
/// trimmed standard output.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn commit(dir: &Path, message: &str) {
    git(dir, &["commit", "--allow-empty", "-m", message]);
}

fn rev(dir: &Path, rev: &str) -> String {
    git(dir, &["rev-parse", rev])
}

/// A repository with `main`, `feature` and `wip/try`, each with a commit of its own.
fn repo() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    git(dir, &["init", "-q", "-b", "main"]);
    commit(dir, "first");
    for branch in ["feature", "wip/try"] {
        git(dir, &["checkout", "-q", "-b", branch, "main"]);
        commit(dir, &format!("on {branch}"));
    }
    git(dir, &["checkout", "-q", "main"]);
    tmp
}

fn not_wip(branch: &str) -> bool {
    !branch.starts_with("wip/")
}

#[tokio::test]
async fn ls_remote_lists_branches() {
    let tmp = repo();
    let dir = tmp.path();
    git(dir, &["tag", "v1"]);
    let heads = ls_remote(dir.to_str().unwrap(), TIMEOUT).await.unwrap();
    let expected: BTreeMap<String, String> = ["feature", "main", "wip/try"]
        .into_iter()
        .map(|b| (b.to_owned(), rev(dir, &format!("refs/heads/{b}"))))
        .collect();
    assert_eq!(heads, expected);
    // The three branches point at three different commits, so a mix-up would show.
    assert_eq!(
        heads
            .values()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        3
    );

    let url = format!("file://{}", dir.display());
    assert_eq!(ls_remote(&url, TIMEOUT).await.unwrap(), expected);
}

#[tokio::test]
async fn ls_remote_of_an_empty_repository_is_empty() {
    let tmp = tempfile::tempdir().unwrap();
    git(tmp.path(), &["init", "-q"]);
    let heads = ls_remote(tmp.path().to_str().unwrap(), TIMEOUT)
        .await
        .unwrap();
    assert!(heads.is_empty(), "{heads:?}");
}

#[tokio::test]
async fn changes_reports_exactly_what_moved() {
    let tmp = repo();
    let dir = tmp.path();
    let url = dir.to_str().unwrap();
    let mut state = PollState::new();

    // The first answer announces every wanted branch.
    let heads = ls_remote(url, TIMEOUT).await.unwrap();
    let first = state.changes(url, &heads, not_wip);
    assert_eq!(
        first,
        vec![
            ("feature".to_owned(), rev(dir, "feature")),
            ("main".to_owned(), rev(dir, "main")),
        ]
    );
    assert_eq!(state.changes(url, &heads, not_wip), vec![]);

    // One wanted branch and one unwanted branch move.
    git(dir, &["checkout", "-q", "feature"]);
    commit(dir, "second on feature");
    git(dir, &["checkout", "-q", "wip/try"]);
    commit(dir, "second on wip");
    let heads = ls_remote(url, TIMEOUT).await.unwrap();
    assert_eq!(
        state.changes(url, &heads, not_wip),
        vec![("feature".to_owned(), rev(dir, "feature"))]
    );
    assert_eq!(state.changes(url, &heads, not_wip), vec![]);
    assert_eq!(state.last_seen(url, "wip/try"), None);

    // A new branch is new, even at a commit already seen.
    git(dir, &["branch", "release", "main"]);
    let heads = ls_remote(url, TIMEOUT).await.unwrap();
    assert_eq!(
        state.changes(url, &heads, not_wip),
        vec![("release".to_owned(), rev(dir, "main"))]
    );

    // A deleted branch is forgotten, so its return is announced.
    git(dir, &["branch", "-q", "-D", "release"]);
    let heads = ls_remote(url, TIMEOUT).await.unwrap();
    assert_eq!(state.changes(url, &heads, not_wip), vec![]);
    assert_eq!(state.last_seen(url, "release"), None);
    git(dir, &["branch", "release", "main"]);
    let heads = ls_remote(url, TIMEOUT).await.unwrap();
    assert_eq!(
        state.changes(url, &heads, not_wip),
        vec![("release".to_owned(), rev(dir, "main"))]
    );
}

#[tokio::test]
async fn remembered_shas_are_not_announced_again() {
    let tmp = repo();
    let dir = tmp.path();
    let url = dir.to_str().unwrap();
    let mut state = PollState::new();
    state.remember(url, "main", &rev(dir, "main"));
    state.remember(url, "feature", &rev(dir, "feature^"));
    let heads = ls_remote(url, TIMEOUT).await.unwrap();
    assert_eq!(
        state.changes(url, &heads, not_wip),
        vec![("feature".to_owned(), rev(dir, "feature"))]
    );
    // Memory is per repository.
    assert_eq!(
        state.changes("elsewhere", &heads, |b| b == "main"),
        vec![("main".to_owned(), rev(dir, "main"))]
    );
}

#[tokio::test]
async fn ls_remote_of_a_missing_repository_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-repo");
    let err = ls_remote(missing.to_str().unwrap(), TIMEOUT)
        .await
        .unwrap_err();
    match err {
        PollError::Git { url, stderr } => {
            assert_eq!(url, missing.to_str().unwrap());
            assert!(!stderr.is_empty());
        }
        other => panic!("expected a git failure, got {other:?}"),
    }

    // Not a repository at all.
    let err = ls_remote(tmp.path().to_str().unwrap(), TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, PollError::Git { .. }), "{err:?}");
}

#[tokio::test]
async fn errors_do_not_show_passwords() {
    // Nothing listens on port 1, so this fails fast whether or not git has HTTP support.
    let err = ls_remote("https://user:hunter2@127.0.0.1:1/repo.git", TIMEOUT)
        .await
        .unwrap_err();
    match &err {
        PollError::Git { url, .. } => assert_eq!(url, "https://user:***@127.0.0.1:1/repo.git"),
        other => panic!("expected a git failure, got {other:?}"),
    }
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[tokio::test]
async fn an_option_is_never_taken_for_a_url() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("ran");
    let url = format!("--upload-pack=touch {}", marker.display());
    let err = ls_remote(&url, TIMEOUT).await.unwrap_err();
    assert!(matches!(err, PollError::Git { .. }), "{err:?}");
    assert!(!marker.exists());
}

#[tokio::test]
async fn a_silent_remote_times_out() {
    // Accepts connections (the kernel does, via the backlog) and never says a word, so git
    // waits for the server's first line until it is killed.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("git://{}/repo.git", listener.local_addr().unwrap());
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let err = ls_remote(&url, timeout).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(20));
    match err {
        PollError::Timeout { timeout: t, .. } => assert_eq!(t, timeout),
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn a_timeout_kills_what_git_started() {
    // Over HTTP, git hands the talking to a `git remote-http` child, which a kill of git
    // alone would leave waiting on the silent server.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/repo.git", listener.local_addr().unwrap());
    match ls_remote(&url, Duration::from_millis(300)).await {
        Err(PollError::Timeout { .. }) => {}
        // A git built without HTTP support fails at once, with nothing to kill.
        Err(PollError::Git { .. }) => return,
        other => panic!("expected a timeout, got {other:?}"),
    }
    let running = || {
        let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
        String::from_utf8_lossy(&ps.stdout)
            .lines()
            .any(|l| l.contains(&url))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while running() {
        assert!(
            Instant::now() < deadline,
            "a git process for {url} outlived the timeout"
        );
        tokio::task::yield_now().await;
    }
}
