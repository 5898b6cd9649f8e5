//! The repository cache and the per-builder workspace, with the `git` command line.
//!
//! One module because it is one job, bringing a workspace to a commit: the cache, the
//! workspace, their locks and what this process remembers of what git said are one protocol
//! of freshness (a commit must be on its branch as of a fetch after its announcement), and
//! splitting it would part each rule from the commands it orders.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use buildmesh_protocol::Timestamp;
use tokio_util::sync::CancellationToken;

use super::capture::Capture;
use super::isolate::Isolation;
use super::process::{ProcessCmd, RunEnd, output_of, run_process};
use super::workdir::{STEP_GITCONFIG, cache_dir, lock_dir};

/// Time limit of one git command before the worker's `timeout_factor`: a first clone of a large
/// repository over a slow link takes long, but a hung one must not hold its cache forever.
pub(crate) const GIT_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// Why the workspace could not be brought to the wanted commit.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckoutError {
    /// A git command failed.
    #[error("`git {args}` exited with code {code}")]
    GitExit { args: String, code: i32 },
    /// A git command was killed by a signal the executor did not send.
    #[error("`git {args}` was killed by signal {signal}")]
    GitSignal { args: String, signal: i32 },
    /// A git command ran past its time limit.
    #[error("`git {args}` timed out after {after}; killed")]
    GitTimeout { args: String, after: String },
    /// A git command could not be run.
    #[error("cannot run `git {args}`: {source}")]
    GitSpawn {
        args: String,
        #[source]
        source: io::Error,
    },
    /// The commit is not in the repository, even after asking for it by id.
    #[error("commit {sha} is not in {url}")]
    MissingCommit { sha: String, url: String },
    /// A shell command on the workspaces failed.
    #[error("`{args}` exited with code {code}")]
    ShellExit { args: String, code: i32 },
    /// The announced branch does not reach the commit, even after fetching it.
    #[error(
        "commit {sha} is not on branch {branch} of {url} (`git merge-base --is-ancestor` says no after fetching the branch): it was never on it, or it was force-pushed off the branch after it was announced; not built (a maintainer can ask for a commit by its id with `buildmesh submit`)"
    )]
    OffBranch {
        sha: String,
        branch: String,
        url: String,
    },
    /// The checked-out commit is not the one asked for.
    #[error("the workspace is at {found}, not at {sha}")]
    WrongCommit { sha: String, found: String },
    /// Something other than git: bad names, the disk.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// The job or builder cannot be checked out at all.
    #[error("{0}")]
    Invalid(String),
    /// The build was cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl CheckoutError {
    /// Git's exit code, when git said no.
    pub(crate) fn exit_code(&self) -> Option<i32> {
        match self {
            CheckoutError::GitExit { code, .. } | CheckoutError::ShellExit { code, .. } => {
                Some(*code)
            }
            _ => None,
        }
    }
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> CheckoutError {
    let what = what.into();
    move |source| CheckoutError::Io { what, source }
}

/// What a checkout needs to know.
#[derive(Debug)]
pub(crate) struct Checkout<'a> {
    pub(crate) work_dir: &'a Path,
    pub(crate) supervisor: Option<&'a Path>,
    pub(crate) timeout: Duration,
    pub(crate) url: &'a str,
    /// The branch the commit was announced on: it must reach the commit.
    pub(crate) branch: &'a str,
    pub(crate) sha: &'a str,
    /// A maintainer asked for this commit by its id: build it even off its branch.
    pub(crate) off_branch_ok: bool,
    /// When the commit was first announced: the cache's view of the branch must be newer.
    pub(crate) announced: Timestamp,
    /// Who runs the git commands in the workspace, with what environment.
    pub(crate) isolation: &'a Isolation,
    /// The step user's `HOME` and `TMPDIR` for this build.
    pub(crate) home: &'a Path,
    pub(crate) tmp: &'a Path,
    pub(crate) cancel: &'a CancellationToken,
}

/// Checks that `sha` is a commit id and not, say, an option for git.
fn check_sha(sha: &str) -> Result<(), CheckoutError> {
    if (7..=64).contains(&sha.len()) && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(CheckoutError::Invalid(format!(
            "`{sha}` is not a commit id"
        )))
    }
}

impl Checkout<'_> {
    /// Brings the workspace `src` to the commit, logging every git command and its output into
    /// `log`. The caller holds the workspace lock; this takes the cache's.
    pub(crate) async fn run(&self, src: &Path, log: &mut Capture) -> Result<(), CheckoutError> {
        check_sha(self.sha)?;
        let cache = cache_dir(self.work_dir, self.url);
        let done = self.bring(&cache, src, log).await;
        if done.is_err() {
            // The next build asks git again everything this process remembered of the cache.
            forget_answers(&cache);
        }
        done
    }

    /// [`Checkout::run`], whose errors make the node forget what git said of the cache.
    async fn bring(
        &self,
        cache: &Path,
        src: &Path,
        log: &mut Capture,
    ) -> Result<(), CheckoutError> {
        let mut afresh = false;
        loop {
            // A commit never changes: a workspace that has it needs no fetch, and takes no
            // turn on the cache (every builder of one commit on this worker after the first).
            let present = !afresh && src.join(".git").exists() && self.has_commit(src).await?;
            let synced = if present {
                log.note(&format!(
                    "buildmesh: the workspace has {} already; nothing to fetch",
                    self.sha
                ));
                // The workspace is the step user's: only the cache says what a branch holds.
                let vouched = self.off_branch_ok
                    || (self.branches_fresh(cache) && self.on_branch(cache).await?);
                if !vouched {
                    let _cache_lock = lock_dir(cache, self.cancel).await?;
                    self.update_cache(cache, log).await?;
                }
                Ok(false)
            } else {
                let _cache_lock = lock_dir(cache, self.cancel).await?;
                self.update_cache(cache, log).await?;
                // The cache's pin on the commit is this build's only while the lock is held.
                self.sync_workspace(cache, src, log).await
            };
            let workspace = match synced {
                Ok(cloned) => self.checkout_workspace(src, cloned, log).await,
                Err(e) => Err(e),
            };
            match workspace {
                Ok(()) => return Ok(()),
                Err(e @ CheckoutError::Cancelled) => return Err(e),
                Err(e) if afresh => return Err(e),
                Err(e) => {
                    // The cache has the commit, so the workspace is at fault (an interrupted
                    // clone, a step that damaged .git): start it afresh once, and ask git
                    // again what this process remembered of the cache (the cache may have
                    // changed behind its back).
                    forget_answers(cache);
                    log.note(&format!(
                        "buildmesh: {e}; removing the workspace and cloning it again"
                    ));
                    tracing::warn!(workspace = %src.display(), error = %e, "checkout failed; cloning the workspace again");
                    self.remove_in_workspace(src, log).await?;
                    afresh = true;
                }
            }
        }
    }

    /// Makes the builder's `home` and an empty `tmp`, as the step user (who owns them).
    pub(crate) async fn prepare_own(
        &self,
        home: &Path,
        tmp: &Path,
        log: &mut Capture,
    ) -> Result<(), CheckoutError> {
        if self.node_owns_workspaces() {
            let (home, tmp) = (home.to_path_buf(), tmp.to_path_buf());
            return blocking(move || {
                remove_if_present(&tmp)?;
                for dir in [&home, &tmp] {
                    std::fs::create_dir_all(dir)
                        .map_err(io_err(format!("creating {}", dir.display())))?;
                }
                Ok(())
            })
            .await;
        }
        self.workspace_sh(
            log,
            "rm -rf -- \"$2\" && mkdir -p -- \"$1\" \"$2\"",
            &[home.as_os_str(), tmp.as_os_str()],
        )
        .await
    }

    async fn update_cache(&self, cache: &Path, log: &mut Capture) -> Result<(), CheckoutError> {
        let parent = cache.parent().unwrap_or(self.work_dir);
        std::fs::create_dir_all(parent)
            .map_err(io_err(format!("creating {}", parent.display())))?;
        let fresh = !cache.exists();
        if fresh {
            // Cloned aside and renamed: a cache directory that exists is a complete clone.
            let tmp = cache.with_extension("git.tmp");
            remove_if_present(&tmp)?;
            self.git(
                log,
                parent,
                &[
                    "clone",
                    "--bare",
                    "--quiet",
                    "--config",
                    "core.sharedRepository=world",
                    "--",
                    self.url,
                ],
                &[tmp.as_os_str()],
            )
            .await?;
            std::fs::rename(&tmp, cache).map_err(io_err(format!(
                "renaming {} to {}",
                tmp.display(),
                cache.display()
            )))?;
        }
        if fresh {
            cloned_now(cache);
        }
        let mut have = self.cache_has_commit(cache).await?;
        let mut fetched = fresh;
        if !have && !fresh {
            fetched = true;
            // Only a commit the cache lacks, or a branch older than the announcement, sends
            // the cache to the origin: a commit, once fetched, does not change, and the
            // origin may be down.
            self.fetch_branches(log, cache).await?;
            have = self.cache_has_commit(cache).await?;
        }
        if !have {
            // Commits no branch reaches (pull requests, force-pushed branches).
            let by_id = self
                .git_in(log, cache, &["fetch", "--quiet", "origin", self.sha])
                .await;
            if let Err(CheckoutError::Cancelled) = by_id {
                return Err(CheckoutError::Cancelled);
            }
            if !self.cache_has_commit(cache).await? {
                return Err(CheckoutError::MissingCommit {
                    sha: self.sha.to_string(),
                    url: self.url.to_string(),
                });
            }
        }
        if !self.off_branch_ok {
            // The cache's branches must be newer than the announcement: a commit force-pushed
            // off its branch since then is not built.
            if !fetched && !self.branches_fresh(cache) {
                self.fetch_branches(log, cache).await?;
                fetched = true;
            }
            if !fetched && !self.on_branch(cache).await? {
                self.fetch_branches(log, cache).await?;
            }
            if !self.on_branch(cache).await? {
                return Err(CheckoutError::OffBranch {
                    sha: self.sha.to_string(),
                    branch: self.branch.to_string(),
                    url: self.url.to_string(),
                });
            }
        }
        // A ref on the commit lets the workspace fetch it by name, whatever the protocol
        // version allows to be fetched by id.
        if with_known(cache, |k| k.wanted.as_deref() == Some(self.sha)) {
            return Ok(());
        }
        let target = format!("{}^{{commit}}", self.sha);
        self.git_in(
            log,
            cache,
            &["update-ref", "refs/buildmesh/wanted", &target],
        )
        .await?;
        with_known(cache, |k| k.wanted = Some(self.sha.to_string()));
        Ok(())
    }

    /// Whether the cache has the commit: git is asked until it says yes once.
    async fn cache_has_commit(&self, cache: &Path) -> Result<bool, CheckoutError> {
        if with_known(cache, |k| k.commits.contains(self.sha)) {
            return Ok(true);
        }
        let have = self.has_commit(cache).await?;
        if have {
            with_known(cache, |k| k.commits.insert(self.sha.to_string()));
        }
        Ok(have)
    }

    /// Clones the workspace from the cache, or fetches from it. Under the cache lock. Returns
    /// whether the workspace was cloned just now (nothing in it but what git checks out).
    async fn sync_workspace(
        &self,
        cache: &Path,
        src: &Path,
        log: &mut Capture,
    ) -> Result<bool, CheckoutError> {
        let parent = src.parent().unwrap_or(self.work_dir);
        if !src.exists() {
            let tmp = src.with_extension("tmp");
            // What an interrupted clone left (the node only looks; the step user removes).
            if !matches!(tmp.symlink_metadata(), Err(e) if e.kind() == io::ErrorKind::NotFound) {
                self.remove_in_workspace(&tmp, log).await?;
            }
            // --no-local: copied, not hard-linked, so no file of the workspace is one of the
            // cache's (a step could otherwise change the next build's objects). The wanted ref
            // comes with the branches and tags, as the fetch below would bring it.
            self.git(
                log,
                parent,
                &[
                    "clone",
                    "--no-local",
                    "--no-checkout",
                    "--quiet",
                    "--config",
                    WANTED_REFSPEC,
                    "--",
                ],
                &[cache.as_os_str(), tmp.as_os_str()],
            )
            .await?;
            if self.node_owns_workspaces() {
                std::fs::rename(&tmp, src).map_err(io_err(format!(
                    "renaming {} to {}",
                    tmp.display(),
                    src.display()
                )))?;
            } else {
                self.workspace_sh(
                    log,
                    "mv -- \"$1\" \"$2\"",
                    &[tmp.as_os_str(), src.as_os_str()],
                )
                .await?;
            }
            return Ok(true);
        }
        self.git_in(
            log,
            src,
            &[
                "fetch",
                "--prune",
                "--force",
                "--quiet",
                "origin",
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
                "+refs/buildmesh/wanted:refs/buildmesh/wanted",
            ],
        )
        .await
        .map(|()| false)
    }

    /// Brings the workspace to the commit, removes everything git does not track (nothing, in a
    /// workspace `cloned` just now), and checks.
    async fn checkout_workspace(
        &self,
        src: &Path,
        cloned: bool,
        log: &mut Capture,
    ) -> Result<(), CheckoutError> {
        self.git_in(
            log,
            src,
            &["checkout", "--force", "--quiet", "--detach", self.sha],
        )
        .await?;
        if !cloned {
            self.git_in(log, src, &["clean", "-ffdx", "--quiet"])
                .await?;
        }
        let (end, out) = output_of(
            self.supervisor,
            &self.cmd(src, &["rev-parse", "HEAD"], &[]),
            self.timeout,
            self.cancel,
        )
        .await;
        let args = "rev-parse HEAD";
        self.check_end(args, end, &out, log)?;
        let out = String::from_utf8_lossy(&out);
        let want = self.sha.to_ascii_lowercase();
        // Only a full commit id is the answer; anything else on the output is not git's.
        let found = out
            .lines()
            .map(str::trim)
            .find(|l| l.len() >= 40 && l.bytes().all(|b| b.is_ascii_hexdigit()))
            .unwrap_or("nothing");
        if found.starts_with(&want) {
            Ok(())
        } else {
            Err(CheckoutError::WrongCommit {
                sha: self.sha.to_string(),
                found: found.to_string(),
            })
        }
    }

    async fn has_commit(&self, repo: &Path) -> Result<bool, CheckoutError> {
        let target = format!("{}^{{commit}}", self.sha);
        self.git_says_yes(repo, &["cat-file", "-e", &target]).await
    }

    /// A git question answered by the exit code: 0 is yes, any other code no; a git that could
    /// not answer (killed, timed out, not started) is an error.
    async fn git_says_yes(&self, repo: &Path, args: &[&str]) -> Result<bool, CheckoutError> {
        let cmd = self.cmd(repo, args, &[]);
        match output_of(self.supervisor, &cmd, self.timeout, self.cancel).await {
            (RunEnd::Exited(0), _) => Ok(true),
            (RunEnd::Exited(_), _) => Ok(false),
            (end, out) => {
                let mut scratch = Capture::new(&[]);
                self.check_end(&args.join(" "), end, &out, &mut scratch)
                    .map(|()| false)
            }
        }
    }

    /// `git -C dir ARGS MORE`: in the cache (or to make it) as the node, with the node's
    /// environment less its secrets; anywhere else (a workspace, which a step may have filled
    /// with hooks and configuration) as the step user, with a step's environment and no hooks.
    fn cmd(&self, dir: &Path, args: &[&str], more: &[&std::ffi::OsStr]) -> ProcessCmd {
        let node_side = dir.starts_with(self.work_dir.join("cache"));
        let mut argv: Vec<OsString> = vec!["git".into(), "-C".into(), dir.into()];
        if node_side {
            argv.extend(["-c".into(), "core.sharedRepository=world".into()]);
        } else {
            argv.extend(
                [
                    "-c",
                    "core.hooksPath=/dev/null",
                    "-c",
                    "core.fsmonitor=false",
                ]
                .iter()
                .map(OsString::from),
            );
        }
        argv.extend(args.iter().map(OsString::from));
        argv.extend(more.iter().map(OsString::from));
        // Nobody can answer a password prompt; fail instead of hanging until the timeout.
        let prompt = ("GIT_TERMINAL_PROMPT".into(), "0".into());
        if node_side {
            ProcessCmd {
                argv,
                cwd: self.work_dir.to_path_buf(),
                env: vec![prompt],
                // Set when the node runs from a git hook, they would point every command
                // elsewhere; git has no use for the node's secrets.
                env_remove: vec![
                    "GIT_DIR",
                    "GIT_WORK_TREE",
                    "GIT_INDEX_FILE",
                    "BUILDMESH_SMTP_PASSWORD",
                    "BUILDMESH_WEBHOOK_SECRET",
                ],
                ..Default::default()
            }
        } else {
            let mut env = self.isolation.base_env(self.home, self.tmp);
            env.push(prompt);
            env.push((
                "GIT_CONFIG_GLOBAL".into(),
                self.work_dir.join(STEP_GITCONFIG).into(),
            ));
            ProcessCmd {
                argv,
                cwd: self.work_dir.to_path_buf(),
                env,
                clear_env: true,
                confine: self.isolation.confinement(false),
                ..Default::default()
            }
        }
    }

    /// `git fetch` of every branch into the cache, remembered as the cache's newest view.
    async fn fetch_branches(&self, log: &mut Capture, cache: &Path) -> Result<(), CheckoutError> {
        let started = Timestamp::now();
        self.git_in(log, cache, &FETCH_BRANCHES).await?;
        fetched_at(cache, started);
        Ok(())
    }

    /// Whether the cache fetched its branches after the commit was announced (this process's
    /// memory: a node that restarted fetches once more).
    fn branches_fresh(&self, cache: &Path) -> bool {
        last_fetch(cache).is_some_and(|t| t >= self.announced)
    }

    /// Whether the announced branch, as the cache has it, reaches the commit.
    async fn on_branch(&self, cache: &Path) -> Result<bool, CheckoutError> {
        let branch = if self.branch.starts_with("refs/") {
            self.branch.to_string()
        } else {
            format!("refs/heads/{}", self.branch)
        };
        let key = (self.sha.to_string(), branch);
        // A cache removed since (the workspace tidy) vouches for nothing.
        if with_known(cache, |k| k.on_branch.contains(&key)) && cache.exists() {
            return Ok(true);
        }
        // Exit 1: not an ancestor; 128: no such branch (yet).
        let fetch = last_fetch(cache);
        let yes = self
            .git_says_yes(cache, &["merge-base", "--is-ancestor", self.sha, &key.1])
            .await?;
        // Not remembered across a fetch that ended meanwhile (this may run outside the lock).
        if yes && last_fetch(cache) == fetch {
            with_known(cache, |k| k.on_branch.insert(key));
        }
        Ok(yes)
    }

    /// Removes `dir` below the builder's directory, as the user who owns it there.
    pub(super) async fn remove_in_workspace(
        &self,
        dir: &Path,
        log: &mut Capture,
    ) -> Result<(), CheckoutError> {
        if self.node_owns_workspaces() {
            let dir = dir.to_path_buf();
            return blocking(move || remove_if_present(&dir)).await;
        }
        self.workspace_sh(log, "rm -rf -- \"$1\"", &[dir.as_os_str()])
            .await
    }

    /// Without a step user the node owns the workspaces, and makes, moves and removes their
    /// directories itself instead of starting `sh`, `rm`, `mkdir` and `mv` for it (three to
    /// five processes a build).
    fn node_owns_workspaces(&self) -> bool {
        self.isolation.step_user.is_none()
    }

    /// Runs `sh -c SCRIPT sh ARGS...` as the step user (who owns the workspaces).
    async fn workspace_sh(
        &self,
        log: &mut Capture,
        script: &str,
        args: &[&std::ffi::OsStr],
    ) -> Result<(), CheckoutError> {
        let mut argv: Vec<OsString> = vec!["sh".into(), "-c".into(), script.into(), "sh".into()];
        argv.extend(args.iter().map(OsString::from));
        let cmd = ProcessCmd {
            argv,
            cwd: self.work_dir.to_path_buf(),
            env: self.isolation.base_env(self.home, self.tmp),
            clear_env: true,
            confine: self.isolation.confinement(false),
            ..Default::default()
        };
        let mut out = Capture::new(&[]);
        let end = run_process(self.supervisor, &cmd, &mut out, self.timeout, self.cancel).await;
        let shown = format!("sh -c '{script}'");
        self.check_end(&shown, end, &out.finish(), log)
            .map_err(|e| match e {
                CheckoutError::GitExit { args, code } => CheckoutError::ShellExit { args, code },
                other => other,
            })
    }

    async fn git_in(
        &self,
        log: &mut Capture,
        repo: &Path,
        args: &[&str],
    ) -> Result<(), CheckoutError> {
        self.git(log, repo, args, &[]).await
    }

    /// Runs `git -C dir ARGS MORE`, logging the command line and the output.
    async fn git(
        &self,
        log: &mut Capture,
        dir: &Path,
        args: &[&str],
        more: &[&std::ffi::OsStr],
    ) -> Result<(), CheckoutError> {
        let mut shown = args.join(" ");
        for m in more {
            shown.push(' ');
            shown.push_str(&m.to_string_lossy());
        }
        log.note(&format!("$ git -C {} {shown}", dir.display()));
        let cmd = self.cmd(dir, args, more);
        let end = run_process(self.supervisor, &cmd, log, self.timeout, self.cancel).await;
        self.check_end(&shown, end, &[], log)
    }

    fn check_end(
        &self,
        args: &str,
        end: RunEnd,
        out: &[u8],
        log: &mut Capture,
    ) -> Result<(), CheckoutError> {
        let args = args.to_string();
        match end {
            RunEnd::Exited(0) => Ok(()),
            RunEnd::Exited(code) => {
                log.append_log(out);
                Err(CheckoutError::GitExit { args, code })
            }
            RunEnd::Signaled(signal) => Err(CheckoutError::GitSignal { args, signal }),
            RunEnd::TimedOut => Err(CheckoutError::GitTimeout {
                args,
                after: humantime::format_duration(self.timeout).to_string(),
            }),
            RunEnd::Cancelled => Err(CheckoutError::Cancelled),
            RunEnd::Failed(source) => Err(CheckoutError::GitSpawn { args, source }),
        }
    }
}

/// What this process knows of each cache, under its lock: when it last fetched its branches
/// from the origin (started), and what git said since. A commit, once in a cache, stays; a
/// branch reaches a commit until the next fetch; the wanted ref is only this process's to
/// move. So the builds of one commit after the first ask git nothing of the cache (a
/// CPython-sized fleet builds each commit on ~50 builders per worker).
#[derive(Debug, Default)]
struct Known {
    fetched: Option<Timestamp>,
    commits: std::collections::HashSet<String>,
    // (commit, branch) that the branch reached at the last fetch.
    on_branch: std::collections::HashSet<(String, String)>,
    wanted: Option<String>,
}

fn known() -> &'static Mutex<HashMap<PathBuf, Known>> {
    static KNOWN: OnceLock<Mutex<HashMap<PathBuf, Known>>> = OnceLock::new();
    KNOWN.get_or_init(Default::default)
}

fn with_known<T>(cache: &Path, f: impl FnOnce(&mut Known) -> T) -> T {
    let mut k = known().lock().unwrap_or_else(PoisonError::into_inner);
    f(k.entry(cache.to_path_buf()).or_default())
}

fn fetched_at(cache: &Path, t: Timestamp) {
    with_known(cache, |k| {
        k.fetched = Some(k.fetched.map_or(t, |f| f.max(t)));
        // A fetch may move a branch off a commit (a force-push).
        k.on_branch.clear();
    });
}

// A checkout failed: what git said of the cache is asked again (when it last fetched stays,
// as that is a fact of the origin, not of the cache's state).
fn forget_answers(cache: &Path) {
    with_known(cache, |k| {
        *k = Known {
            fetched: k.fetched,
            ..Known::default()
        }
    });
}

// A cache just cloned: nothing known of it before counts.
fn cloned_now(cache: &Path) {
    with_known(cache, |k| *k = Known::default());
    fetched_at(cache, Timestamp::now());
}

fn last_fetch(cache: &Path) -> Option<Timestamp> {
    with_known(cache, |k| k.fetched)
}

/// The fetch refspec a workspace clone also gets: the cache's ref on the wanted commit.
const WANTED_REFSPEC: &str = "remote.origin.fetch=+refs/buildmesh/wanted:refs/buildmesh/wanted";

/// `git fetch` of every branch of the origin into the cache.
const FETCH_BRANCHES: [&str; 5] = [
    "fetch",
    "--prune",
    "--quiet",
    "origin",
    "+refs/heads/*:refs/heads/*",
];

// Runs file system work that may take long (a large workspace removed) off the async threads,
// to its end: a build cancelled meanwhile must not find its directory half gone.
async fn blocking(
    f: impl FnOnce() -> Result<(), CheckoutError> + Send + 'static,
) -> Result<(), CheckoutError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(CheckoutError::Invalid(format!(
            "the file system work of a checkout failed: {e}"
        )))
    })
}

// `rm -rf`: a directory with what is in it, or a file, or nothing.
fn remove_if_present(path: &Path) -> Result<(), CheckoutError> {
    let removed = match path.symlink_metadata() {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match removed {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(io_err(format!("removing {}", path.display()))(e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shas_that_inject_are_refused() {
        assert!(check_sha("--upload-pack=x").is_err());
        assert!(check_sha("abc").is_err());
        assert!(check_sha(&"a".repeat(40)).is_ok());
    }
}
