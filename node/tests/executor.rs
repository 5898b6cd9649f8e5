//! The executor against real git repositories and real processes: one area (checkout and the
//! branch check, steps, timeouts, retries, logs, what a step's environment holds, the
//! supervisor), one file of tests sharing one fixture, hence its length. Steps run as another
//! user and in a sandbox are tested against a whole node in `tests/tests/e2e/isolation.rs`.
//!
//! The supervisor is tested through this test binary itself: a small script stands in for the
//! `buildmesh` binary and runs the test `supervisor_entry` of this binary, which calls the same
//! code as `buildmesh supervise`.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use buildmesh_node::executor::{
    BuildOutcome, BuildSpec, CHECKOUT_STEP, ExecutorConfig, StepOutcome, run_build,
    supervise_status,
};
use buildmesh_protocol::SecretKey;
use buildmesh_protocol::builders::{Builder, Step};
use buildmesh_protocol::record::{JobKey, ResultCode};
use tokio_util::sync::CancellationToken;

/// Long enough for a loaded CI machine, short enough to end a broken test.
const DEADLINE: Duration = Duration::from_secs(30);

/// Set by the stand-in supervisor script: this process is a supervisor, not a test run.
const AS_SUPERVISOR: &str = "BUILDMESH_TEST_AS_SUPERVISOR";

/// Not a test: the body of the stand-in `buildmesh supervise -- CMD...` (see the file docs).
/// In a normal test run it does nothing.
#[test]
fn supervisor_entry() {
    if std::env::var_os(AS_SUPERVISOR).is_none() {
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let cmd = match args.iter().position(|a| a == "--") {
        Some(i) => args[i + 1..].to_vec(),
        None => Vec::new(),
    };
    std::process::exit(supervise_status(&cmd, &Default::default()).into());
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A repository with one file, committed; returns its path.
fn make_repo(root: &Path) -> PathBuf {
    let repo = root.join("upstream");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "--quiet", "-b", "main"]);
    repo
}

/// Writes `file.txt` with `text` and commits it; returns the commit id.
fn commit(repo: &Path, text: &str) -> String {
    std::fs::write(repo.join("file.txt"), text).unwrap();
    git(repo, &["add", "file.txt"]);
    git(repo, &["commit", "--quiet", "-m", text]);
    git(repo, &["rev-parse", "HEAD"])
}

fn step(name: &str, run: &str) -> Step {
    Step {
        name: name.to_string(),
        run: run.to_string(),
        timeout_ms: DEADLINE.as_millis() as u64,
        warn: Vec::new(),
        retries: 0,
        flaky_exit_codes: Vec::new(),
        network: true,
    }
}

fn spec(name: &str, repo: &str, sha: &str, steps: Vec<Step>) -> BuildSpec {
    let key = JobKey {
        builder: name.to_string(),
        repo: repo.to_string(),
        branch: "main".to_string(),
        sha: sha.to_string(),
        purpose: Default::default(),
    };
    BuildSpec {
        job: key.id(),
        key,
        attempt: 1,
        builder: Builder {
            name: name.to_string(),
            repo: repo.to_string(),
            branches: vec!["main".to_string()],
            tags: BTreeSet::new(),
            requires: BTreeMap::new(),
            env: BTreeMap::new(),
            priority: 0,
            steps,
            max_attempts: 4,
            confirm: None,
            keep_logs_ms: None,
            keep_passing_logs_ms: None,
        },
        worker: SecretKey::from_seed([7; 32]).id(),
        worker_name: "worker-seven".to_string(),
        off_branch_ok: false,
        announced: buildmesh_protocol::Timestamp(0),
    }
}

/// A test's directories: the upstream repository with one commit, and the work directory.
struct Fixture {
    tmp: tempfile::TempDir,
    repo: PathBuf,
    sha: String,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let repo = make_repo(tmp.path());
        let sha = commit(&repo, "one\n");
        Fixture { tmp, repo, sha }
    }

    fn config(&self) -> ExecutorConfig {
        ExecutorConfig::new(self.tmp.path().join("work"))
    }

    fn spec(&self, steps: Vec<Step>) -> BuildSpec {
        spec("b1", self.repo.to_str().unwrap(), &self.sha, steps)
    }

    /// A path outside the workspace (which `git clean` empties).
    fn outside(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

async fn build(config: &ExecutorConfig, spec: &BuildSpec) -> BuildOutcome {
    tokio::time::timeout(
        DEADLINE * 2,
        run_build(config, spec, CancellationToken::new()),
    )
    .await
    .expect("the build ends")
}

fn log(s: &StepOutcome) -> String {
    String::from_utf8_lossy(&s.log).into_owned()
}

fn names(o: &BuildOutcome) -> Vec<&str> {
    o.steps.iter().map(|s| s.name.as_str()).collect()
}

/// The pid a step wrote to `file`, once written completely.
async fn wait_for_pid(file: &Path) -> i32 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok(text) = std::fs::read_to_string(file)
            && text.ends_with('\n')
            && let Ok(pid) = text.trim().parse()
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "{} was not written in time",
            file.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Gone, or a zombie nobody reaped (PID 1 in some containers does not).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let after_name = &stat[stat.rfind(')').map(|i| i + 1).unwrap_or(0)..];
            after_name.trim_start().starts_with('Z')
        }
    }
}

async fn assert_process_gone(pid: i32) {
    let deadline = Instant::now() + DEADLINE;
    while !process_gone(pid) {
        assert!(Instant::now() < deadline, "process {pid} survived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A step that starts a long `sleep` in the background, writes its pid, and waits.
fn sleeper(pidfile: &Path) -> String {
    format!("sleep 60 & echo $! > '{}'; wait", pidfile.display())
}

/// Writes the stand-in `buildmesh` for supervisor tests. It is written by a child process: a
/// file this (multi-threaded) process has open for writing could be inherited by a concurrent
/// fork, and executing it would then fail with "text file busy".
fn supervisor_script(dir: &Path) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = dir.join("buildmesh-standin");
    let text = format!(
        "#!/bin/sh\n\
         [ \"$1\" = supervise ] && [ \"$2\" = -- ] || {{ echo \"bad arguments: $*\" >&2; exit 99; }}\n\
         shift 2\n\
         {AS_SUPERVISOR}=1 exec '{}' --exact supervisor_entry --nocapture --test-threads=1 -q -- \"$@\"\n",
        exe.display()
    );
    let status = Command::new("sh")
        .args([
            "-c",
            "printf '%s' \"$1\" > \"$2\" && chmod 755 \"$2\"",
            "sh",
        ])
        .arg(text)
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    path
}

// ---------------------------------------------------------------------------------------------
// Builds

#[tokio::test]
async fn steps_run_in_order_at_the_exact_commit() {
    let f = Fixture::new();
    let first = f.sha.clone();
    let second = commit(&f.repo, "two\n");
    let config = f.config();

    let mut s = f.spec(vec![
        step("show", "cat file.txt; echo out; echo err >&2"),
        step("check", "test \"$(cat file.txt)\" = one && touch junk"),
    ]);
    s.key.sha = first.clone();
    let o = build(&config, &s).await;
    assert_eq!(o.result, ResultCode::Success, "{o:#?}");
    assert_eq!(names(&o), ["show", "check"]);
    assert_eq!(o.steps[0].exit_code, Some(0));
    assert_eq!(log(&o.steps[0]), "one\nout\nerr\n");
    assert!(o.started <= o.finished);
    let cache = std::fs::read_dir(config.work_dir.join("cache"))
        .unwrap()
        .count();
    assert_eq!(cache, 1, "one cache for the repository");
    assert!(config.work_dir.join("builds/b1/src/.git").is_dir());

    // The second build reuses the workspace: fetched, checked out, cleaned.
    let mut s = f.spec(vec![step(
        "check",
        "test \"$(cat file.txt)\" = two && ! test -e junk && git rev-parse HEAD",
    )]);
    s.key.sha = second.clone();
    let o = build(&config, &s).await;
    assert_eq!(o.result, ResultCode::Success, "{o:#?}");
    assert!(log(&o.steps[0]).contains(&second), "{}", log(&o.steps[0]));

    // And back to the older commit.
    let mut s = f.spec(vec![step("check", "test \"$(cat file.txt)\" = one")]);
    s.key.sha = first;
    assert_eq!(build(&config, &s).await.result, ResultCode::Success);
}

#[tokio::test]
async fn commits_pushed_later_are_fetched() {
    let f = Fixture::new();
    let config = f.config();
    let o = build(&config, &f.spec(vec![step("a", "true")])).await;
    assert_eq!(o.result, ResultCode::Success, "{o:#?}");

    // A commit on a branch, and one that no branch reaches any more.
    let on_branch = commit(&f.repo, "two\n");
    git(&f.repo, &["checkout", "--quiet", "-b", "side"]);
    let orphaned = commit(&f.repo, "three\n");
    git(&f.repo, &["checkout", "--quiet", "main"]);
    git(&f.repo, &["branch", "-D", "side"]);
    git(
        &f.repo,
        &["config", "uploadpack.allowAnySHA1InWant", "true"],
    );

    // The orphaned commit only when a maintainer asked for it by its id.
    for (sha, text, vouched) in [(&on_branch, "two", false), (&orphaned, "three", true)] {
        let mut s = f.spec(vec![step(
            "check",
            &format!("test \"$(cat file.txt)\" = {text}"),
        )]);
        s.key.sha = sha.clone();
        s.off_branch_ok = vouched;
        let o = build(&config, &s).await;
        assert_eq!(o.result, ResultCode::Success, "{text}: {o:#?}");
    }
    // A workspace cloned for it gets the orphaned commit with its clone (which fetches no
    // branch reaching it: the cache's ref on the wanted commit comes along), and builds.
    let mut s = f.spec(vec![step("check", "test \"$(cat file.txt)\" = three")]);
    s.key.sha = orphaned.clone();
    s.builder.name = "another builder".into();
    s.key.builder = s.builder.name.clone();
    s.off_branch_ok = true;
    let o = build(&config, &s).await;
    assert_eq!(o.result, ResultCode::Success, "{o:#?}");
}

#[tokio::test]
async fn a_commit_its_branch_does_not_reach_is_not_built() {
    let f = Fixture::new();
    let config = f.config();
    // A commit on another branch, announced as main's; then one force-pushed off main.
    git(&f.repo, &["checkout", "--quiet", "-b", "fork"]);
    let forked = commit(&f.repo, "fork\n");
    git(&f.repo, &["checkout", "--quiet", "main"]);
    let marker = f.outside("built");
    let touch = step("touch", &format!("touch '{}'", marker.display()));
    let mut s = f.spec(vec![touch.clone()]);
    s.key.sha = forked.clone();
    let o = build(&config, &s).await;
    assert_eq!(o.result, ResultCode::Exception, "{o:#?}");
    assert_eq!(names(&o), [CHECKOUT_STEP]);
    let text = log(&o.steps[0]);
    assert!(text.contains("is not on branch main"), "{text}");
    assert!(!marker.exists(), "a step of the off-branch commit ran");

    // Built on main and cached; then main is reset under it.
    let pushed = commit(&f.repo, "pushed\n");
    let mut s = f.spec(vec![touch]);
    s.key.sha = pushed.clone();
    assert_eq!(build(&config, &s).await.result, ResultCode::Success);
    std::fs::remove_file(&marker).unwrap();
    git(&f.repo, &["reset", "--quiet", "--hard", &f.sha]);
    s.announced = buildmesh_protocol::Timestamp::now();
    let o = build(&config, &s).await;
    assert_eq!(o.result, ResultCode::Exception, "{o:#?}");
    let text = log(&o.steps[0]);
    assert!(text.contains("force-pushed off the branch"), "{text}");
    assert!(!marker.exists(), "a step of the force-pushed commit ran");
}

#[tokio::test]
async fn a_damaged_workspace_is_cloned_again() {
    let f = Fixture::new();
    let config = f.config();
    let s = f.spec(vec![step("check", "test \"$(cat file.txt)\" = one")]);
    assert_eq!(build(&config, &s).await.result, ResultCode::Success);
    let git_dir = config.work_dir.join("builds/b1/src/.git");
    std::fs::remove_dir_all(git_dir.join("objects")).unwrap();
    std::fs::write(git_dir.join("HEAD"), "garbage").unwrap();
    let o = build(&config, &s).await;
    assert_eq!(o.result, ResultCode::Success, "{o:#?}");
}

#[tokio::test]
async fn what_an_interrupted_clone_left_is_removed() {
    let f = Fixture::new();
    let config = f.config();
    let s = f.spec(vec![step("check", "test \"$(cat file.txt)\" = one")]);
    assert_eq!(build(&config, &s).await.result, ResultCode::Success);
    let src = config.work_dir.join("builds/b1/src");
    let tmp = config.work_dir.join("builds/b1/src.tmp");
    // A clone cut short leaves a directory; anything else may be there too.
    for leftover in ["directory", "file"] {
        std::fs::remove_dir_all(&src).unwrap();
        if leftover == "directory" {
            std::fs::create_dir_all(tmp.join(".git/objects")).unwrap();
            std::fs::write(tmp.join(".git/HEAD"), "half").unwrap();
        } else {
            std::fs::write(&tmp, "x").unwrap();
        }
        let o = build(&config, &s).await;
        assert_eq!(o.result, ResultCode::Success, "{leftover}: {o:#?}");
        assert!(!tmp.exists(), "{leftover}");
        assert!(src.join(".git").is_dir(), "{leftover}");
    }
}

// What the node remembers of its cache is a hint: a cache changed behind its back (here its ref
// on the wanted commit, which a new workspace's clone asks for, is gone) costs one retry, not
// the build.
#[tokio::test]
async fn a_cache_changed_behind_the_nodes_back_is_asked_again() {
    let f = Fixture::new();
    let config = f.config();
    let s = f.spec(vec![step("check", "test \"$(cat file.txt)\" = one")]);
    assert_eq!(build(&config, &s).await.result, ResultCode::Success);
    let cache = std::fs::read_dir(config.work_dir.join("cache"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    git(&cache, &["update-ref", "-d", "refs/buildmesh/wanted"]);
    let mut other = f.spec(vec![step("check", "test \"$(cat file.txt)\" = one")]);
    other.builder.name = "another builder".into();
    other.key.builder = other.builder.name.clone();
    let o = build(&config, &other).await;
    assert_eq!(o.result, ResultCode::Success, "{o:#?}");
}

#[tokio::test]
async fn cached_commits_build_while_the_repository_is_unreachable() {
    let f = Fixture::new();
    let config = f.config();
    let s = f.spec(vec![step("check", "test \"$(cat file.txt)\" = one")]);
    assert_eq!(build(&config, &s).await.result, ResultCode::Success);
    std::fs::rename(&f.repo, f.outside("moved")).unwrap();
    let o = build(&config, &s).await;
    assert_eq!(o.result, ResultCode::Success, "{o:#?}");
    let mut missing = s.clone();
    missing.key.sha = "0123456789abcdef0123456789abcdef01234567".to_string();
    let o = build(&config, &missing).await;
    assert_eq!(o.result, ResultCode::Exception, "{o:#?}");
}

#[tokio::test]
async fn a_commit_the_workspace_has_is_built_again_without_fetching() {
    let f = Fixture::new();
    let config = f.config();
    let s = f.spec(vec![step("check", "test \"$(cat file.txt)\" = one")]);
    assert_eq!(build(&config, &s).await.result, ResultCode::Success);
    // The origin is gone: the workspace has the commit, and the cache says its branch has it.
    std::fs::rename(&f.repo, f.outside("moved")).unwrap();
    let o = build(&config, &s).await;
    assert_eq!(o.result, ResultCode::Success, "{o:#?}");
    // Without the cache, nothing says the branch reaches the commit: not built.
    std::fs::remove_dir_all(config.work_dir.join("cache")).unwrap();
    let o = build(&config, &s).await;
    assert_eq!(o.result, ResultCode::Exception, "{o:#?}");
    std::fs::rename(f.outside("moved"), &f.repo).unwrap();
    // What the previous build left behind is still cleaned away.
    let mut dirty = f.spec(vec![step("mess", "touch junk")]);
    dirty.key.builder = s.key.builder.clone();
    assert_eq!(build(&config, &dirty).await.result, ResultCode::Success);
    let o = build(&config, &f.spec(vec![step("clean", "test ! -e junk")])).await;
    assert_eq!(o.result, ResultCode::Success, "{o:#?}");
}

#[tokio::test]
async fn warning_lines_are_counted() {
    let f = Fixture::new();
    let mut warn = step(
        "compile",
        "echo 'warning: unused'; echo fine; echo 'warning: deprecated' >&2; echo 'a warning: no'",
    );
    warn.warn = vec!["^warning:".to_string(), "^never$".to_string()];
    let o = build(&f.config(), &f.spec(vec![warn, step("after", "true")])).await;
    assert_eq!(o.result, ResultCode::Warnings, "{o:#?}");
    assert_eq!(
        names(&o),
        ["compile", "after"],
        "warnings do not stop a build"
    );
    assert_eq!(o.steps[0].result, ResultCode::Warnings);
    assert_eq!(o.steps[0].warnings, 2);
    assert_eq!(o.steps[0].exit_code, Some(0));
    assert_eq!(o.steps[1].result, ResultCode::Success);
}

#[tokio::test]
async fn a_failing_step_ends_the_build() {
    let f = Fixture::new();
    let marker = f.outside("later-ran");
    let o = build(
        &f.config(),
        &f.spec(vec![
            step("fails", "echo before; exit 3"),
            step("later", &format!("touch '{}'", marker.display())),
        ]),
    )
    .await;
    assert_eq!(o.result, ResultCode::Failure, "{o:#?}");
    assert_eq!(names(&o), ["fails"]);
    assert_eq!(o.steps[0].result, ResultCode::Failure);
    assert_eq!(o.steps[0].exit_code, Some(3));
    assert!(
        log(&o.steps[0]).starts_with("before\n"),
        "{}",
        log(&o.steps[0])
    );
    assert!(o.steps[0].failing_lines.is_empty());
    assert!(!marker.exists(), "the later step ran");
}

#[tokio::test]
async fn a_step_that_passes_on_retry_is_flaky() {
    let f = Fixture::new();
    let marker = f.outside("failed-once");
    let mut flaky = step(
        "test",
        &format!(
            "if [ -e '{m}' ]; then echo 'all passed'; else touch '{m}'; \
             echo 'test_a ... FAIL'; echo 'plain line'; echo 'ERROR: boom' >&2; exit 1; fi",
            m = marker.display()
        ),
    );
    flaky.retries = 1;
    let o = build(&f.config(), &f.spec(vec![flaky, step("after", "true")])).await;
    assert_eq!(o.result, ResultCode::Flaky, "{o:#?}");
    assert_eq!(
        names(&o),
        ["test", "after"],
        "a flaky step does not stop a build"
    );
    let t = &o.steps[0];
    assert_eq!(t.result, ResultCode::Flaky);
    assert_eq!(t.exit_code, Some(0));
    assert_eq!(t.failing_lines, ["test_a ... FAIL", "ERROR: boom"]);
    let text = log(t);
    assert!(
        text.contains("test_a ... FAIL") && text.contains("all passed"),
        "{text}"
    );
    assert!(text.contains("run 2 of at most 2"), "{text}");
}

// CPython's test runner reruns a failed test itself and exits 5 when it then passed.
#[tokio::test]
async fn a_flaky_exit_code_the_builder_names_is_flaky_not_red() {
    let f = Fixture::new();
    let mut t = step(
        "test",
        "echo 'FAIL: test_socket (test.test_socket)'; echo 'passed on rerun'; exit 5",
    );
    t.flaky_exit_codes = vec![5];
    let o = build(&f.config(), &f.spec(vec![t, step("after", "true")])).await;
    assert_eq!(o.result, ResultCode::Flaky, "{o:#?}");
    assert_eq!(
        names(&o),
        ["test", "after"],
        "a flaky step does not stop a build"
    );
    let s = &o.steps[0];
    assert_eq!((s.result, s.exit_code), (ResultCode::Flaky, Some(5)));
    assert_eq!(s.failing_lines, ["FAIL: test_socket (test.test_socket)"]);
    // Another non-zero code is still red.
    let mut red = step("test", "exit 3");
    red.flaky_exit_codes = vec![5];
    let o = build(&f.config(), &f.spec(vec![red])).await;
    assert_eq!(o.result, ResultCode::Failure);
}

#[tokio::test]
async fn a_step_failing_every_retry_fails() {
    let f = Fixture::new();
    let mut bad = step("test", "echo FAIL; exit 2");
    bad.retries = 2;
    let o = build(&f.config(), &f.spec(vec![bad])).await;
    assert_eq!(o.result, ResultCode::Failure, "{o:#?}");
    let text = log(&o.steps[0]);
    assert_eq!(text.matches("FAIL\n").count(), 3, "three runs: {text}");
    assert_eq!(o.steps[0].exit_code, Some(2));
    assert!(
        o.steps[0].failing_lines.is_empty(),
        "only flaky steps name lines"
    );
}

#[tokio::test]
async fn a_step_past_its_time_limit_is_killed_with_its_children() {
    let f = Fixture::new();
    let pidfile = f.outside("pid");
    let mut slow = step("slow", &sleeper(&pidfile));
    slow.timeout_ms = 1000;
    let started = Instant::now();
    let o = build(&f.config(), &f.spec(vec![slow, step("after", "true")])).await;
    assert!(started.elapsed() < DEADLINE, "the time limit held");
    assert_eq!(o.result, ResultCode::Failure, "{o:#?}");
    assert_eq!(names(&o), ["slow"]);
    assert_eq!(o.steps[0].exit_code, None);
    let text = log(&o.steps[0]);
    assert!(
        text.contains("buildmesh: step timed out after 1s; killed"),
        "{text}"
    );
    assert_process_gone(wait_for_pid(&pidfile).await).await;
}

#[tokio::test]
async fn the_timeout_factor_stretches_time_limits() {
    let f = Fixture::new();
    let mut config = f.config();
    config.timeout_factor = 0.5;
    let mut slow = step("slow", "sleep 60");
    slow.timeout_ms = 2000;
    let o = build(&config, &f.spec(vec![slow])).await;
    let text = log(&o.steps[0]);
    assert!(text.contains("timed out after 1s"), "{text}");
}

#[tokio::test]
async fn a_step_killed_by_a_foreign_signal_fails() {
    let f = Fixture::new();
    let o = build(&f.config(), &f.spec(vec![step("dies", "kill -SEGV $$")])).await;
    assert_eq!(o.result, ResultCode::Failure, "{o:#?}");
    assert_eq!(o.steps[0].exit_code, None);
    assert!(log(&o.steps[0]).contains("SIGSEGV"), "{}", log(&o.steps[0]));
}

#[tokio::test]
async fn background_leftovers_do_not_outlive_their_step() {
    let f = Fixture::new();
    let pidfile = f.outside("pid");
    let o = build(
        &f.config(),
        &f.spec(vec![step(
            "leaves",
            &format!("sleep 60 & echo $! > '{}'", pidfile.display()),
        )]),
    )
    .await;
    assert_eq!(o.result, ResultCode::Success, "{o:#?}");
    assert_process_gone(wait_for_pid(&pidfile).await).await;
}

#[tokio::test]
async fn an_unreachable_repository_is_an_exception() {
    let f = Fixture::new();
    let s = spec(
        "b1",
        f.outside("no-such-repo").to_str().unwrap(),
        &f.sha,
        vec![step("a", "true")],
    );
    let o = build(&f.config(), &s).await;
    assert_eq!(o.result, ResultCode::Exception, "{o:#?}");
    assert_eq!(names(&o), [CHECKOUT_STEP]);
    assert_eq!(o.steps[0].result, ResultCode::Exception);
    assert_eq!(o.steps[0].exit_code, Some(128), "git's exit code");
    let text = log(&o.steps[0]);
    assert!(
        text.contains("clone") && text.contains("checkout failed"),
        "{text}"
    );
}

#[tokio::test]
async fn an_unknown_commit_is_an_exception() {
    let f = Fixture::new();
    let config = f.config();
    let mut s = f.spec(vec![step("a", "true")]);
    s.key.sha = "0123456789abcdef0123456789abcdef01234567".to_string();
    let o = build(&config, &s).await;
    assert_eq!(o.result, ResultCode::Exception, "{o:#?}");
    assert_eq!(names(&o), [CHECKOUT_STEP]);
    let text = log(&o.steps[0]);
    assert!(text.contains("is not in"), "{text}");

    // Not a commit id at all: refused before git sees it.
    s.key.sha = "--upload-pack=touch x".to_string();
    let o = build(&config, &s).await;
    assert_eq!(o.result, ResultCode::Exception, "{o:#?}");
    assert!(log(&o.steps[0]).contains("not a commit id"));

    // The cache still serves good commits.
    assert_eq!(
        build(&config, &f.spec(vec![step("a", "true")]))
            .await
            .result,
        ResultCode::Success
    );
}

#[tokio::test]
async fn cancelling_kills_the_running_step() {
    let f = Fixture::new();
    let pidfile = f.outside("pid");
    let marker = f.outside("later-ran");
    let s = f.spec(vec![
        step("slow", &sleeper(&pidfile)),
        step("later", &format!("touch '{}'", marker.display())),
    ]);
    let config = f.config();
    let token = CancellationToken::new();
    let (o, pid) = tokio::join!(build_with(&config, &s, token.clone()), async {
        let pid = wait_for_pid(&pidfile).await;
        token.cancel();
        pid
    });
    assert_eq!(o.result, ResultCode::Cancelled, "{o:#?}");
    assert_eq!(names(&o), ["slow"]);
    assert_eq!(o.steps[0].result, ResultCode::Cancelled);
    assert_eq!(o.steps[0].exit_code, None);
    assert_process_gone(pid).await;
    assert!(!marker.exists());

    // Cancelled before it starts: nothing runs.
    let token = CancellationToken::new();
    token.cancel();
    let o = build_with(&config, &s, token).await;
    assert_eq!(o.result, ResultCode::Cancelled, "{o:#?}");
    assert_eq!(names(&o), [CHECKOUT_STEP]);
}

async fn build_with(
    config: &ExecutorConfig,
    spec: &BuildSpec,
    token: CancellationToken,
) -> BuildOutcome {
    tokio::time::timeout(DEADLINE * 2, run_build(config, spec, token))
        .await
        .expect("the build ends")
}

#[tokio::test]
async fn dropping_the_build_kills_the_running_step() {
    let f = Fixture::new();
    let pidfile = f.outside("pid");
    let s = f.spec(vec![step("slow", &sleeper(&pidfile))]);
    let config = f.config();
    let pid = tokio::select! {
        o = run_build(&config, &s, CancellationToken::new()) => panic!("the build ended: {o:#?}"),
        pid = wait_for_pid(&pidfile) => pid,
    };
    assert_process_gone(pid).await;
}

#[tokio::test]
async fn steps_see_the_builder_environment_and_the_job() {
    let f = Fixture::new();
    let mut s = f.spec(vec![step(
        "env",
        "for v in FOO BUILDMESH_BUILDER BUILDMESH_REPO BUILDMESH_BRANCH BUILDMESH_SHA \
         BUILDMESH_WORKER BUILDMESH_WORKER_NAME BUILDMESH_ATTEMPT BUILDMESH_JOB; do \
         eval \"echo $v=\\$$v\"; done",
    )]);
    s.builder
        .env
        .insert("FOO".to_string(), "bar baz".to_string());
    s.attempt = 2;
    let o = build(&f.config(), &s).await;
    assert_eq!(o.result, ResultCode::Success, "{o:#?}");
    let want = format!(
        "FOO=bar baz\nBUILDMESH_BUILDER=b1\nBUILDMESH_REPO={}\nBUILDMESH_BRANCH=main\n\
         BUILDMESH_SHA={}\nBUILDMESH_WORKER={}\nBUILDMESH_WORKER_NAME=worker-seven\n\
         BUILDMESH_ATTEMPT=2\nBUILDMESH_JOB={}\n",
        f.repo.display(),
        f.sha,
        s.worker,
        s.job
    );
    assert_eq!(log(&o.steps[0]), want);
}

#[tokio::test]
async fn concurrent_builds_of_one_repository_share_its_cache() {
    let f = Fixture::new();
    let config = f.config();
    let a = f.spec(vec![step("a", "test \"$(cat file.txt)\" = one")]);
    let mut b = a.clone();
    b.builder.name = "b2".to_string();
    let mut c = a.clone();
    c.builder.name = "b3".to_string();
    let (oa, ob, oc, od) = tokio::join!(
        build(&config, &a),
        build(&config, &b),
        build(&config, &c),
        build(&config, &a)
    );
    for o in [oa, ob, oc, od] {
        assert_eq!(o.result, ResultCode::Success, "{o:#?}");
    }
}

#[tokio::test]
async fn a_builder_without_steps_succeeds() {
    let f = Fixture::new();
    let o = build(&f.config(), &f.spec(Vec::new())).await;
    assert_eq!(o.result, ResultCode::Success, "{o:#?}");
    assert!(o.steps.is_empty());
}

// ---------------------------------------------------------------------------------------------
// The supervisor

fn supervised(f: &Fixture) -> ExecutorConfig {
    let mut config = f.config();
    config.supervisor = Some(supervisor_script(f.tmp.path()));
    config
}

#[tokio::test]
async fn supervised_steps_report_like_unsupervised_ones() {
    let f = Fixture::new();
    let config = supervised(&f);
    let marker = f.outside("later-ran");
    let o = build(
        &config,
        &f.spec(vec![
            step("ok", "test \"$(cat file.txt)\" = one && echo fine"),
            // The step's parent is the supervisor, which leads the step's process group.
            step(
                "parent",
                "grep -q supervisor_entry /proc/$PPID/cmdline && \
                 test \"$(cut -d' ' -f5 /proc/$$/stat)\" = \"$PPID\"",
            ),
            step("fails", "exit 3"),
            step("later", &format!("touch '{}'", marker.display())),
        ]),
    )
    .await;
    assert_eq!(o.result, ResultCode::Failure, "{o:#?}");
    assert_eq!(names(&o), ["ok", "parent", "fails"]);
    assert!(log(&o.steps[0]).contains("fine\n"));
    assert_eq!(o.steps[2].exit_code, Some(3));
    assert!(!marker.exists());
}

#[tokio::test]
async fn supervised_steps_are_killed_on_timeout_and_cancel() {
    let f = Fixture::new();
    let config = supervised(&f);

    let pidfile = f.outside("pid-timeout");
    let mut slow = step("slow", &sleeper(&pidfile));
    slow.timeout_ms = 1000;
    let o = build(&config, &f.spec(vec![slow])).await;
    assert_eq!(o.result, ResultCode::Failure, "{o:#?}");
    assert_eq!(o.steps[0].exit_code, None);
    assert_process_gone(wait_for_pid(&pidfile).await).await;

    let pidfile = f.outside("pid-cancel");
    let s = f.spec(vec![step("slow", &sleeper(&pidfile))]);
    let token = CancellationToken::new();
    let (o, pid) = tokio::join!(build_with(&config, &s, token.clone()), async {
        let pid = wait_for_pid(&pidfile).await;
        token.cancel();
        pid
    });
    assert_eq!(o.result, ResultCode::Cancelled, "{o:#?}");
    assert_process_gone(pid).await;
}

#[tokio::test]
async fn a_supervised_step_that_left_its_process_group_is_killed_too() {
    let f = Fixture::new();
    let config = supervised(&f);
    // `setsid` makes the sleep a session (and group) of its own, out of reach of a kill of the
    // step's group; the supervisor, its subreaper, still finds and ends it.
    let pidfile = f.outside("pid-setsid");
    let run = format!(
        "setsid sleep 60 & echo $! > '{}.tmp' && mv '{0}.tmp' '{0}'; sleep 60",
        pidfile.display()
    );
    let mut slow = step("slow", &run);
    slow.timeout_ms = 1000;
    let o = build(&config, &f.spec(vec![slow])).await;
    assert_eq!(o.result, ResultCode::Failure, "{o:#?}");
    let pid = wait_for_pid(&pidfile).await;
    assert_process_gone(pid).await;

    // And when it ends by itself, leaving the escaped sleep behind.
    let pidfile = f.outside("pid-setsid-2");
    let run = format!(
        "setsid sleep 60 & echo $! > '{}.tmp' && mv '{0}.tmp' '{0}'",
        pidfile.display()
    );
    let o = build(&config, &f.spec(vec![step("quick", &run)])).await;
    assert_eq!(o.result, ResultCode::Success, "{o:#?}");
    assert_process_gone(wait_for_pid(&pidfile).await).await;
}

#[test]
fn supervise_passes_the_exit_code_on() {
    let tmp = tempfile::tempdir().unwrap();
    let standin = supervisor_script(tmp.path());
    let run = |cmd: &[&str]| {
        Command::new(&standin)
            .arg("supervise")
            .arg("--")
            .args(cmd)
            .output()
            .unwrap()
    };
    assert_eq!(run(&["sh", "-c", "exit 7"]).status.code(), Some(7));
    assert_eq!(run(&["true"]).status.code(), Some(0));
    assert_eq!(run(&["sh", "-c", "kill -KILL $$"]).status.code(), Some(137));
    assert_eq!(run(&["/no/such/program"]).status.code(), Some(127));
    assert_eq!(run(&[]).status.code(), Some(125));
    let out = run(&["sh", "-c", "echo to-stdout; echo to-stderr >&2"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("to-stdout\n"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("to-stderr\n"));
}

#[tokio::test]
async fn supervise_kills_its_group_when_its_parent_dies() {
    let tmp = tempfile::tempdir().unwrap();
    let standin = supervisor_script(tmp.path());
    let pidfile = tmp.path().join("pid");
    // A stand-in node: starts the supervisor, then is killed with SIGKILL.
    let mut node = Command::new("sh")
        .args(["-c", "\"$0\" supervise -- sh -c \"$1\" & wait"])
        .arg(&standin)
        .arg(sleeper(&pidfile))
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = wait_for_pid(&pidfile).await;
    assert!(!process_gone(pid));
    node.kill().unwrap();
    let status = node.wait().unwrap();
    assert_eq!(status.signal(), Some(9));
    assert_process_gone(pid).await;
}

#[tokio::test]
async fn supervise_kills_its_group_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let standin = supervisor_script(tmp.path());
    let pidfile = tmp.path().join("pid");
    let mut sup = Command::new(&standin)
        .arg("supervise")
        .arg("--")
        .args(["sh", "-c", &sleeper(&pidfile)])
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = wait_for_pid(&pidfile).await;
    Command::new("kill")
        .args(["-TERM", &sup.id().to_string()])
        .status()
        .unwrap();
    let status = sup.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "it killed its own group: {status:?}"
    );
    assert_process_gone(pid).await;
}

#[tokio::test]
async fn builds_of_one_builder_at_once_get_their_own_workspaces() {
    let f = Fixture::new();
    let config = f.config();
    let meet = f.outside("meet");
    std::fs::create_dir_all(&meet).unwrap();
    // Each build waits until the other has started: run one after the other, both fail.
    let run = format!(
        "touch {m}/$BUILDMESH_ATTEMPT; pwd > {m}/pwd-$BUILDMESH_ATTEMPT; \
         for i in $(seq 400); do [ -e {m}/1 ] && [ -e {m}/2 ] && exit 0; sleep 0.05; done; exit 1",
        m = meet.display()
    );
    let mut a = f.spec(vec![step("meet", &run)]);
    a.attempt = 1;
    let mut b = a.clone();
    b.attempt = 2;
    let (oa, ob) = tokio::join!(build(&config, &a), build(&config, &b));
    assert_eq!(oa.result, ResultCode::Success, "{oa:#?}");
    assert_eq!(ob.result, ResultCode::Success, "{ob:#?}");
    let pa = std::fs::read_to_string(meet.join("pwd-1")).unwrap();
    let pb = std::fs::read_to_string(meet.join("pwd-2")).unwrap();
    assert_ne!(pa, pb, "two workspaces");
}

// ---------------------------------------------------------------------------------------------
// What a step sees

#[tokio::test]
async fn a_step_sees_only_the_allowed_environment() {
    let f = Fixture::new();
    let mut config = f.config();
    // The test runner's own variables stand in for the node's secrets: none may pass but the
    // one the worker allows.
    assert!(std::env::var_os("CARGO_PKG_NAME").is_some());
    config.isolation.env_allow = vec!["CARGO_PKG_NAME".into()];
    let mut s = f.spec(vec![step("env", "env")]);
    s.builder.env.insert("FROM_BUILDER".into(), "yes".into());
    let o = build(&config, &s).await;
    assert_eq!(o.result, ResultCode::Success, "{o:#?}");
    let text = log(&o.steps[0]);
    let own = config.work_dir.join("builds/b1");
    let mut names = Vec::new();
    for line in text.lines() {
        let (k, v) = line.split_once('=').unwrap();
        names.push(k.to_string());
        match k {
            "HOME" => assert_eq!(Path::new(v), own.join("home")),
            "TMPDIR" => assert_eq!(Path::new(v), own.join("tmp")),
            "FROM_BUILDER" => assert_eq!(v, "yes"),
            "CARGO_PKG_NAME" => assert_eq!(v, "buildmesh-node"),
            _ => {}
        }
    }
    for n in &names {
        let allowed = [
            "PATH", "LANG", "HOME", "TMPDIR", "PWD", "SHLVL", "_", "OLDPWD",
        ]
        .contains(&n.as_str())
            || n.starts_with("BUILDMESH_")
            || n == "FROM_BUILDER"
            || n == "CARGO_PKG_NAME";
        assert!(allowed, "{n} reached the step:\n{text}");
    }
    for n in [
        "HOME",
        "TMPDIR",
        "BUILDMESH_SHA",
        "FROM_BUILDER",
        "CARGO_PKG_NAME",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} is missing:\n{text}");
    }
    assert!(own.join("home").is_dir() && own.join("tmp").is_dir());
}

#[tokio::test]
async fn a_step_finds_its_temporary_directory_empty() {
    let f = Fixture::new();
    let config = f.config();
    let o = build(
        &config,
        &f.spec(vec![step(
            "litter",
            "test -z \"$(ls -A \"$TMPDIR\")\" && touch \"$TMPDIR/left\"",
        )]),
    )
    .await;
    assert_eq!(o.result, ResultCode::Success, "{o:#?}");
    let o = build(
        &config,
        &f.spec(vec![step("look", "test -z \"$(ls -A \"$TMPDIR\")\"")]),
    )
    .await;
    assert_eq!(o.result, ResultCode::Success, "{o:#?}");
}
