//! Running builds: check out the commit, run the builder's steps, say how it went.
//!
//! [`run_build`] takes a [`BuildSpec`] (the job and its builder) and returns a [`BuildOutcome`]
//! with a [`StepOutcome`] per step that ran, logs included (in memory, at most 16 MiB per step:
//! the tail). It never fails: what goes wrong on the worker's side is the result
//! [`ResultCode::Exception`].
//!
//! # The work directory
//!
//! Everything lives below [`ExecutorConfig::work_dir`] (`workdir` makes it and says who owns
//! what; `checkout` brings a workspace to a commit):
//! - `cache/<first 16 hex digits of blake3(url)>.git`: a bare clone per repository, fetched
//!   before every build. Commits no branch reaches are fetched by id. A commit already in the
//!   cache builds even when the repository cannot be reached. Builds of one repository take
//!   turns on its cache.
//! - `builds/<builder>/src` (and `src-1`, `src-2` … for builds of one builder at once): a
//!   workspace of a builder, cloned from the cache (copied, never hard-linked), brought to the
//!   commit with `git checkout --force --detach` and `git clean -ffdx`. Each build running at
//!   once has its own; past 16 at once, builds wait for the first. Beside them the builder's
//!   `home` (a step's `HOME`, kept) and `tmp`, `tmp-1` … (its `TMPDIR`, emptied before each
//!   build). With a step user, `builds` and everything below belong to it, and every git
//!   command there runs as it ([`isolate`] says why and what else holds a step).
//! - `step.gitconfig`: the step user's git configuration (it may read the node's cache).
//!
//! Before a commit is built, the cache must show that the announced branch reaches it
//! (`git merge-base --is-ancestor`), from a fetch made after the announcement; otherwise the
//! build is an Exception whose checkout log says why, unless a maintainer asked for the commit
//! by its id ([`BuildSpec::off_branch_ok`]).
//!
//! Clones are made beside their final place and renamed, so a directory that exists is a
//! complete clone; a workspace git cannot bring to the commit is cloned afresh once. When the
//! checkout fails the build is an Exception with one step, `checkout`, whose log holds the git
//! commands and what they said. A successful checkout adds no step.
//!
//! # Processes
//!
//! Every step (and every git command) runs in a process group of its own, with stdin from
//! `/dev/null` and stdout and stderr on one pipe, so the log shows them in the order they were
//! written. Killing a step is `SIGKILL` to its whole group (for a supervised step, SIGTERM to
//! the supervisor first; see below), which reaches what it started in the background too. The group is killed when the step's time limit passes, when the build is
//! cancelled, when the `run_build` future is dropped (a guard in the running step), and when the
//! step's first process ends by itself (background leftovers would otherwise outlive the step
//! and keep its output open). The group leader is reaped only after that last kill: while it is
//! an unreaped zombie its pid, which names the group, cannot be given to another process.
//!
//! A node killed with SIGKILL cannot kill anything. Hence the supervisor: with
//! [`ExecutorConfig::supervisor`] set, a step runs as `<supervisor> supervise -- sh -c RUN`.
//! The executor makes the supervisor the leader of a new process group, and the supervisor
//! ([`supervise`]) runs the command in that *same* group, then
//! - arms the parent-death signal (SIGTERM when its parent dies) and, if the parent is already
//!   gone, exits at once;
//! - on SIGTERM, SIGINT or SIGHUP sends SIGKILL to its group: the command, everything it
//!   started, and the supervisor itself (so it ends by SIGKILL; there is nothing to report to);
//! - otherwise exits with the command's exit code (128 + signal when a signal killed it).
//!
//! Sharing one group is what makes both kills work: the executor's `killpg` reaches supervisor
//! and step alike, and the supervisor's reaches the step's processes when the node is gone. A
//! second group inside would hide the step from the executor's kill.
//!
//! The parent-death signal fires when the *thread* that started the process ends, not the
//! process. Tokio's threads are not forever (`block_in_place` turns a worker into a blocking
//! thread that ends when idle), so every process is started by one thread that lives as long as
//! the node.
//!
//! A process that leaves the group (`setsid`, a daemon that double-forks) is still the
//! supervisor's descendant: the supervisor is a child subreaper, so orphans are re-parented to
//! it, and it kills every descendant when the step ends, when the memory limit is passed and
//! when the node dies (found by a test: a `setsid sleep` outlived a SIGKILLed node before).
//! So the executor stops a supervised step (time limit, cancel, a dropped build) with SIGTERM
//! to its supervisor, and SIGKILL to the group only if the supervisor has not ended within 2 s.
//! What still escapes: such a process when the supervisor itself is killed with SIGKILL by
//! someone else; its output is no longer read 5 seconds after the step ends. A sandbox's PID
//! namespace, or a cgroup, holds those too.
//!
//! # Results
//!
//! - Exit 0: Success, or Warnings when a line of output matches a step's `warn` pattern
//!   (`warnings` counts the lines of the last run).
//! - Exit with one of the step's `flaky_exit_codes` (the runner reran a failed test and it
//!   passed): Flaky, with the failing lines of the run.
//! - Exit non-zero, or killed by a signal the executor did not send: Failure. With `retries`,
//!   the step runs again, up to `retries` more times; a pass then is Flaky, with the lines of
//!   the failed runs that contain `FAIL` or `ERROR` in `failing_lines` (at most 50). The log of
//!   a retried step holds every run, each after a header line.
//! - Past its time limit (`timeout_ms` × `timeout_factor`): Failure without exit code, not
//!   retried (a hang retried only hangs longer).
//! - Cancelled: Cancelled. A step that could not be started: Exception.
//!
//! Failure, Exception and Cancelled end the build; Flaky and Warnings do not. The build's result
//! is the worst of its steps: Exception, Cancelled, Failure, Flaky, Warnings, Success.

mod capture;
mod checkout;
mod isolate;
mod process;
mod supervise;
mod tidy;
mod workdir;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use buildmesh_protocol::builders::{Builder, Step};
use buildmesh_protocol::record::{JobKey, ResultCode, StepResult};
use buildmesh_protocol::{Hash, NodeId, Timestamp};
use tokio_util::sync::CancellationToken;

use capture::Capture;
use checkout::{Checkout, CheckoutError, GIT_TIMEOUT};
use process::{ProcessCmd, RunEnd, run_process};
use workdir::lock_workspace;

pub use isolate::{ENV_FROM_NODE, Isolation, NotPrivate, Sandbox, StepUser, check_private};
pub(crate) use supervise::PARENT_ENV;
pub use supervise::{Confinement, supervise, supervise_status};
pub use tidy::{Tidied, tidy};

/// The name of the step reported when the checkout fails.
pub const CHECKOUT_STEP: &str = "checkout";

/// How the executor runs builds on this worker.
#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    /// Everything the executor writes lives below: repository caches and workspaces.
    pub work_dir: PathBuf,
    /// The `buildmesh` binary: when set, every process runs as `<supervisor> supervise -- ...`,
    /// so it dies with the node even when the node is killed with SIGKILL. When `None`,
    /// processes run directly (and survive a SIGKILLed node).
    pub supervisor: Option<PathBuf>,
    /// Every step's time limit is multiplied by this (slow machines set it above 1). A value
    /// that is not a positive number counts as 1.
    pub timeout_factor: f64,
    /// Who steps run as, what they see and what they may use ([`isolate`]).
    pub isolation: Isolation,
}

impl ExecutorConfig {
    /// Builds in `work_dir`, without supervisor, with the time limits as configured.
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        ExecutorConfig {
            work_dir: work_dir.into(),
            supervisor: None,
            timeout_factor: 1.0,
            isolation: Isolation::default(),
        }
    }

    fn scaled(&self, timeout: Duration) -> Duration {
        let factor = if self.timeout_factor.is_finite() && self.timeout_factor > 0.0 {
            self.timeout_factor
        } else {
            1.0
        };
        Duration::try_from_secs_f64(timeout.as_secs_f64() * factor).unwrap_or(Duration::MAX)
    }
}

/// One attempt of one job, as claimed by this worker.
#[derive(Clone, Debug)]
pub struct BuildSpec {
    /// The job id.
    pub job: Hash,
    /// What to build: the repository, branch and commit come from here.
    pub key: JobKey,
    /// The attempt number, from 1.
    pub attempt: u32,
    /// The builder, as the configuration defines it; its name names the workspace.
    pub builder: Builder,
    /// This worker's node id.
    pub worker: NodeId,
    /// This worker's name, for people.
    pub worker_name: String,
    /// A maintainer asked for this commit by its id: it is built even when its branch does not
    /// reach it. Otherwise a commit off its announced branch is not built (an Exception).
    pub off_branch_ok: bool,
    /// When the commit was first announced. The worker's clone cache must have fetched the
    /// branch since, so a commit force-pushed off it in between is not built either.
    pub announced: Timestamp,
}

/// How one step ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepOutcome {
    /// The step's name ([`CHECKOUT_STEP`] for a failed checkout).
    pub name: String,
    /// How it ended.
    pub result: ResultCode,
    /// The exit code of its last run, if it exited by itself.
    pub exit_code: Option<i32>,
    /// Wall time of all its runs.
    pub duration_ms: u64,
    /// Lines of the last run that matched a warning pattern.
    pub warnings: u32,
    /// Its output, every run, with the executor's notes (`buildmesh: ...` lines).
    pub log: Vec<u8>,
    /// For a flaky step: the lines of the failed runs that contain `FAIL` or `ERROR`.
    pub failing_lines: Vec<String>,
}

impl StepOutcome {
    /// The step as it goes into a build result record, with the digest of its stored log.
    pub fn to_result(&self, log: Option<Hash>) -> StepResult {
        StepResult {
            name: self.name.clone(),
            result: self.result,
            exit_code: self.exit_code,
            duration_ms: self.duration_ms,
            warnings: self.warnings,
            log,
            failing_lines: self.failing_lines.clone(),
        }
    }
}

/// How a build ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildOutcome {
    /// The worst result among the steps (Success for a builder without steps).
    pub result: ResultCode,
    /// The steps that ran, in order.
    pub steps: Vec<StepOutcome>,
    /// When the build started.
    pub started: Timestamp,
    /// When it ended.
    pub finished: Timestamp,
}

/// Runs one build to the end (or until `cancel` fires: then every process of it is killed and
/// the result is Cancelled). Dropping the future kills the running step's processes too.
pub async fn run_build(
    config: &ExecutorConfig,
    spec: &BuildSpec,
    cancel: CancellationToken,
) -> BuildOutcome {
    let started = Timestamp::now();
    tracing::info!(
        job = %spec.job,
        builder = %spec.builder.name,
        sha = %spec.key.sha,
        attempt = spec.attempt,
        "build started"
    );
    let steps = build(config, spec, &cancel).await;
    let result = steps
        .iter()
        .map(|s| s.result)
        .max_by_key(|r| severity(*r))
        .unwrap_or(ResultCode::Success);
    let finished = Timestamp::now();
    tracing::info!(
        job = %spec.job,
        builder = %spec.builder.name,
        result = %result,
        steps = steps.len(),
        duration_ms = finished.since(started).as_millis() as u64,
        "build finished"
    );
    BuildOutcome {
        result,
        steps,
        started,
        finished,
    }
}

/// Makes `work_dir` ready for builds confined by `iso`: the clone cache readable by the step
/// user, `builds` owned by it (handed over once, which needs root or CAP_CHOWN). Every build
/// does this too; a node does it at start to fail early.
pub fn prepare_work_dir(work_dir: &Path, iso: &Isolation) -> Result<(), String> {
    let work_dir = std::path::absolute(work_dir).map_err(|e| e.to_string())?;
    workdir::prepare_work_dir(&work_dir, iso).map_err(|e| e.to_string())
}

/// The order of [`BuildOutcome::result`]: higher is worse.
fn severity(r: ResultCode) -> u8 {
    match r {
        ResultCode::Success => 0,
        ResultCode::Warnings => 1,
        ResultCode::Flaky => 2,
        ResultCode::Failure => 3,
        ResultCode::Cancelled => 4,
        ResultCode::Exception => 5,
    }
}

async fn build(
    config: &ExecutorConfig,
    spec: &BuildSpec,
    cancel: &CancellationToken,
) -> Vec<StepOutcome> {
    let clock = Instant::now();
    let mut log = Capture::new(&[]);
    let place = match checkout(config, spec, cancel, &mut log).await {
        Ok(place) => place,
        Err(e) => {
            let result = match e {
                CheckoutError::Cancelled => ResultCode::Cancelled,
                _ => ResultCode::Exception,
            };
            if result == ResultCode::Cancelled {
                tracing::debug!(job = %spec.job, builder = %spec.builder.name, "build cancelled during its checkout");
            } else {
                tracing::warn!(
                    job = %spec.job,
                    builder = %spec.builder.name,
                    error = %e,
                    "checkout failed"
                );
            }
            log.note(&format!("buildmesh: checkout failed: {e}"));
            return vec![StepOutcome {
                name: CHECKOUT_STEP.to_string(),
                result,
                exit_code: e.exit_code(),
                duration_ms: elapsed_ms(clock),
                warnings: 0,
                log: log.finish(),
                failing_lines: Vec::new(),
            }];
        }
    };
    let env = step_env(spec, &config.isolation, &place);
    let mut outcomes = Vec::new();
    for step in &spec.builder.steps {
        if cancel.is_cancelled() {
            let mut log = Capture::new(&[]);
            log.note("buildmesh: the build was cancelled before this step started");
            outcomes.push(StepOutcome {
                name: step.name.clone(),
                result: ResultCode::Cancelled,
                exit_code: None,
                duration_ms: 0,
                warnings: 0,
                log: log.finish(),
                failing_lines: Vec::new(),
            });
            break;
        }
        let outcome = run_step(config, step, &place, &env, cancel).await;
        tracing::debug!(
            job = %spec.job,
            step = %outcome.name,
            result = %outcome.result,
            exit_code = ?outcome.exit_code,
            duration_ms = outcome.duration_ms,
            "step finished"
        );
        let stop = matches!(
            outcome.result,
            ResultCode::Failure | ResultCode::Exception | ResultCode::Cancelled
        );
        outcomes.push(outcome);
        if stop {
            break;
        }
    }
    outcomes
}

/// Where a build runs: its workspace at the commit, the builder's directory around it, and the
/// lock that keeps the workspace the build's own.
#[derive(Debug)]
struct Place {
    /// The workspace, `builds/<builder id>/src[-n]`.
    src: PathBuf,
    /// `builds/<builder id>`: the workspaces, `home` and `tmp[-n]` of the builder.
    own: PathBuf,
    /// `builds`.
    builds: PathBuf,
    /// The step's `HOME`, kept from build to build (caches of pip, ccache...).
    home: PathBuf,
    /// The step's `TMPDIR`, emptied before each build.
    tmp: PathBuf,
    _lock: tokio::sync::OwnedMutexGuard<()>,
}

/// The workspace at the commit, and the lock that keeps it there for the build.
async fn checkout(
    config: &ExecutorConfig,
    spec: &BuildSpec,
    cancel: &CancellationToken,
    log: &mut Capture,
) -> Result<Place, CheckoutError> {
    let work_dir = std::path::absolute(&config.work_dir).map_err(|source| CheckoutError::Io {
        what: format!("work directory {}", config.work_dir.display()),
        source,
    })?;
    workdir::prepare_work_dir(&work_dir, &config.isolation)?;
    let (src, lock) = lock_workspace(&work_dir, &spec.builder.name, cancel).await?;
    let own = src.parent().unwrap_or(&work_dir).to_path_buf();
    let slot = src
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("src"))
        .unwrap_or("");
    let place = Place {
        home: own.join("home"),
        tmp: own.join(format!("tmp{slot}")),
        builds: work_dir.join("builds"),
        own,
        src,
        _lock: lock,
    };
    let checkout = Checkout {
        work_dir: &work_dir,
        supervisor: config.supervisor.as_deref(),
        timeout: config.scaled(GIT_TIMEOUT),
        url: &spec.key.repo,
        branch: &spec.key.branch,
        sha: &spec.key.sha,
        off_branch_ok: spec.off_branch_ok,
        announced: spec.announced,
        isolation: &config.isolation,
        home: &place.home,
        tmp: &place.tmp,
        cancel,
    };
    checkout.prepare_own(&place.home, &place.tmp, log).await?;
    checkout.run(&place.src, log).await?;
    Ok(place)
}

/// A step's environment: what [`Isolation::base_env`] allows, the builder's `env`, and what the
/// build is.
fn step_env(spec: &BuildSpec, iso: &Isolation, place: &Place) -> Vec<(OsString, OsString)> {
    let mut env: BTreeMap<OsString, OsString> =
        iso.base_env(&place.home, &place.tmp).into_iter().collect();
    for (k, v) in &spec.builder.env {
        env.insert(k.into(), v.into());
    }
    let ours = [
        ("BUILDMESH_BUILDER", spec.key.builder.clone()),
        ("BUILDMESH_REPO", spec.key.repo.clone()),
        ("BUILDMESH_BRANCH", spec.key.branch.clone()),
        ("BUILDMESH_SHA", spec.key.sha.clone()),
        ("BUILDMESH_WORKER", spec.worker.to_string()),
        ("BUILDMESH_WORKER_NAME", spec.worker_name.clone()),
        ("BUILDMESH_ATTEMPT", spec.attempt.to_string()),
        ("BUILDMESH_JOB", spec.job.to_string()),
    ];
    for (k, v) in ours {
        env.insert(k.into(), v.into());
    }
    env.into_iter().collect()
}

/// Runs a step, again after a failure while it has retries left.
async fn run_step(
    config: &ExecutorConfig,
    step: &Step,
    place: &Place,
    env: &[(OsString, OsString)],
    cancel: &CancellationToken,
) -> StepOutcome {
    let clock = Instant::now();
    let timeout = config.scaled(Duration::from_millis(step.timeout_ms));
    let iso = &config.isolation;
    let argv = vec!["sh".into(), "-c".into(), step.run.as_str().into()];
    let cmd = ProcessCmd {
        argv: iso.sandboxed(argv, &place.own, &place.builds, &place.src, step.network),
        cwd: place.src.clone(),
        env: env.to_vec(),
        clear_env: true,
        confine: iso.confinement(true),
        ..Default::default()
    };
    let mut capture = Capture::new(&step.warn);
    let mut failing_lines: Vec<String> = Vec::new();
    let runs = step.retries.saturating_add(1);
    let mut run = 1;
    let (result, exit_code) = loop {
        if runs > 1 {
            capture.note(&format!(
                "buildmesh: ===== run {run} of at most {runs} ====="
            ));
        }
        capture.start_run();
        let end = run_process(
            config.supervisor.as_deref(),
            &cmd,
            &mut capture,
            timeout,
            cancel,
        )
        .await;
        let exit_code = match end {
            RunEnd::Exited(0) => {
                let result = if run > 1 {
                    ResultCode::Flaky
                } else if capture.run_warnings > 0 {
                    ResultCode::Warnings
                } else {
                    ResultCode::Success
                };
                break (result, Some(0));
            }
            RunEnd::Exited(code) if step.flaky_exit_codes.contains(&code) => {
                // The step's own word that a test failed and then passed on rerun.
                capture.note(&format!(
                    "buildmesh: step exited with code {code}: failed, then passed on rerun (flaky)"
                ));
                let room = capture::MAX_FAILING_LINES.saturating_sub(failing_lines.len());
                failing_lines.extend(capture.run_failing.drain(..).take(room));
                break (ResultCode::Flaky, Some(code));
            }
            RunEnd::Exited(code) => {
                capture.note(&format!("buildmesh: step exited with code {code}"));
                Some(code)
            }
            RunEnd::Signaled(sig) => {
                let name = nix::sys::signal::Signal::try_from(sig)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| format!("signal {sig}"));
                capture.note(&format!("buildmesh: step killed by {name}"));
                None
            }
            RunEnd::TimedOut => {
                capture.note(&format!(
                    "buildmesh: step timed out after {}; killed",
                    humantime::format_duration(whole_millis(timeout))
                ));
                break (ResultCode::Failure, None);
            }
            RunEnd::Cancelled => {
                capture.note("buildmesh: build cancelled; step killed");
                break (ResultCode::Cancelled, None);
            }
            RunEnd::Failed(e) => {
                capture.note(&format!("buildmesh: cannot run the step: {e}"));
                break (ResultCode::Exception, None);
            }
        };
        let room = capture::MAX_FAILING_LINES.saturating_sub(failing_lines.len());
        failing_lines.extend(capture.run_failing.drain(..).take(room));
        if run >= runs {
            break (ResultCode::Failure, exit_code);
        }
        run += 1;
    };
    StepOutcome {
        name: step.name.clone(),
        result,
        exit_code,
        duration_ms: elapsed_ms(clock),
        warnings: capture.run_warnings,
        failing_lines: if result == ResultCode::Flaky {
            failing_lines
        } else {
            Vec::new()
        },
        log: capture.finish(),
    }
}

fn whole_millis(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis().min(u64::MAX as u128) as u64)
}

fn elapsed_ms(since: Instant) -> u64 {
    since.elapsed().as_millis().min(u64::MAX as u128) as u64
}
