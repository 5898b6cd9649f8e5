//! Running one command in its own process group, with its output captured, a time limit,
//! cancellation, and no process of the group left behind.
//!
//! Three threads are involved besides the caller's task:
//! - the spawner thread (one per process, never ends) creates every child: the supervisor's
//!   parent-death signal fires when the *thread* that created it ends, and tokio threads do end
//!   (`block_in_place` turns a worker into a blocking thread that exits when idle);
//! - a waiter thread per child waits for it to end *without reaping it* (`waitid` with
//!   `WNOWAIT`), kills what is left of its group, then reaps it. While the leader is an unreaped
//!   zombie its pid cannot be reused, so every `killpg` aimed at the group hits the right one;
//! - the caller's task reads the output pipe and waits for the end, the time limit or
//!   cancellation, whichever comes first.

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, mpsc};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt as _;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::capture::Capture;
use super::supervise::{Confinement, PARENT_ENV};

/// How long the output pipe may stay open after the process group is gone. Only a process that
/// left the group (`setsid`) can hold it; its output is not worth a stuck build.
const PIPE_GRACE: Duration = Duration::from_secs(5);

/// A command to run: the program and its arguments, where, with what environment (on top of
/// the node's own, or alone with `clear_env`), and confined how (which needs the supervisor).
#[derive(Debug, Default)]
pub(crate) struct ProcessCmd {
    pub(crate) argv: Vec<OsString>,
    pub(crate) cwd: PathBuf,
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) env_remove: Vec<&'static str>,
    pub(crate) clear_env: bool,
    pub(crate) confine: Confinement,
}

/// How a run ended.
#[derive(Debug)]
pub(crate) enum RunEnd {
    /// The process exited by itself with this code.
    Exited(i32),
    /// A signal the executor did not send killed it.
    Signaled(i32),
    /// The time limit passed; the group was killed.
    TimedOut,
    /// The cancellation token fired; the group was killed.
    Cancelled,
    /// The process could not be started or watched.
    Failed(io::Error),
}

/// Runs `cmd` to its end, appending its output (stdout and stderr, interleaved as written) to
/// `capture`. With a supervisor the process run is `<supervisor> supervise -- ARGV...`.
pub(crate) async fn run_process(
    supervisor: Option<&Path>,
    cmd: &ProcessCmd,
    capture: &mut Capture,
    timeout: Duration,
    cancel: &CancellationToken,
) -> RunEnd {
    if cancel.is_cancelled() {
        return RunEnd::Cancelled;
    }
    let started = match start(supervisor, cmd).await {
        Ok(s) => s,
        Err(e) => return RunEnd::Failed(e),
    };
    let Started {
        mut reader,
        guard,
        mut exit,
    } = started;

    let mut timer = std::pin::pin!(tokio::time::sleep(timeout));
    let mut grace: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let mut status: Option<io::Result<ExitStatus>> = None;
    let mut killed: Option<RunEnd> = None;
    let mut eof = false;
    let mut buf = vec![0u8; 64 * 1024];
    while !(eof && status.is_some()) {
        tokio::select! {
            r = reader.read(&mut buf), if !eof => match r {
                Ok(0) => eof = true,
                Ok(n) => capture.push(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    capture.note(&format!("buildmesh: reading the output failed: {e}"));
                    eof = true;
                }
            },
            r = &mut exit, if status.is_none() => {
                status = Some(r.unwrap_or_else(|_| Err(io::Error::other("the waiter thread ended"))));
                grace = Some(Box::pin(tokio::time::sleep(PIPE_GRACE)));
            }
            () = &mut timer, if killed.is_none() && status.is_none() => {
                guard.kill();
                killed = Some(RunEnd::TimedOut);
            }
            () = cancel.cancelled(), if killed.is_none() && status.is_none() => {
                guard.kill();
                killed = Some(RunEnd::Cancelled);
            }
            () = async {
                match grace.as_mut() {
                    Some(g) => g.await,
                    None => std::future::pending().await,
                }
            }, if !eof => {
                capture.note("buildmesh: a process that left the step's process group still holds its output; no longer read");
                eof = true;
            }
        }
    }
    capture.end_run();
    if let Some(end) = killed {
        return end;
    }
    match status {
        Some(Ok(s)) => match (s.code(), s.signal()) {
            (Some(code), _) => RunEnd::Exited(code),
            (None, Some(sig)) => RunEnd::Signaled(sig),
            (None, None) => RunEnd::Failed(io::Error::other(format!("unexpected status {s}"))),
        },
        Some(Err(e)) => RunEnd::Failed(e),
        None => RunEnd::Failed(io::Error::other("no exit status")),
    }
}

struct Started {
    reader: pipe::Receiver,
    guard: GroupGuard,
    exit: oneshot::Receiver<io::Result<ExitStatus>>,
}

async fn start(supervisor: Option<&Path>, cmd: &ProcessCmd) -> io::Result<Started> {
    let Some((program, args)) = cmd.argv.split_first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
    };
    let confined = cmd.confine != Confinement::default();
    let mut command = match supervisor {
        Some(sup) => {
            let mut c = Command::new(sup);
            if cmd.clear_env {
                c.env_clear();
            }
            c.arg("supervise")
                .args(cmd.confine.args())
                .arg("--")
                .arg(program)
                .args(args)
                .env(PARENT_ENV, std::process::id().to_string());
            c
        }
        None if confined => {
            return Err(io::Error::other(
                "another user or limits for a step need the buildmesh binary as supervisor",
            ));
        }
        None => {
            let mut c = Command::new(program);
            if cmd.clear_env {
                c.env_clear();
            }
            c.args(args);
            c
        }
    };
    for name in &cmd.env_remove {
        command.env_remove(name);
    }
    // One pipe for both streams keeps stdout and stderr in the order they were written.
    let (read_end, write_end) = io::pipe()?;
    command
        .current_dir(&cmd.cwd)
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(write_end.try_clone()?)
        .stderr(write_end)
        .process_group(0);
    let reader = pipe::Receiver::from_owned_fd(OwnedFd::from(read_end))?;
    // `command` (holding our copies of the write end) is dropped by the spawner, so the pipe
    // reaches end-of-file once the group's processes are gone.
    let child = spawn(command).await?;
    let pid = Pid::from_raw(child.id() as i32);
    let state = Arc::new(Mutex::new(Reaped(false)));
    let guard = GroupGuard {
        pgid: pid,
        state: state.clone(),
        supervised: supervisor.is_some(),
    };
    let (tx, exit) = oneshot::channel();
    std::thread::Builder::new()
        .name("buildmesh-wait".into())
        .spawn(move || wait_kill_reap(child, state, tx))?;
    Ok(Started {
        reader,
        guard,
        exit,
    })
}

/// Whether the group leader has been reaped: from then on its pid may name another process.
#[derive(Debug)]
struct Reaped(bool);

/// How long a supervisor has to end what it started before its whole group gets SIGKILL.
const SUPERVISOR_GRACE: Duration = Duration::from_secs(2);

/// Kills the process group when dropped (the build future was dropped) or asked to.
#[derive(Debug)]
struct GroupGuard {
    pgid: Pid,
    state: Arc<Mutex<Reaped>>,
    /// The leader is `buildmesh supervise`: on SIGTERM it kills every process it started,
    /// those that left the group too, which a SIGKILL to the group would leave behind.
    supervised: bool,
}

impl GroupGuard {
    fn kill(&self) {
        let reaped = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if reaped.0 {
            return;
        }
        if !self.supervised {
            kill_group(self.pgid);
            return;
        }
        match nix::sys::signal::kill(self.pgid, Signal::SIGTERM) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => {
                tracing::warn!(pid = self.pgid.as_raw(), error = %e, "cannot signal a supervisor");
            }
        }
        // A supervisor that does not end in time goes with its group.
        let (pgid, state) = (self.pgid, self.state.clone());
        let spawned = std::thread::Builder::new()
            .name("buildmesh-grace".into())
            .spawn(move || {
                std::thread::sleep(SUPERVISOR_GRACE);
                let reaped = state.lock().unwrap_or_else(PoisonError::into_inner);
                if !reaped.0 {
                    kill_group(pgid);
                }
            });
        if spawned.is_err() {
            kill_group(self.pgid);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

fn kill_group(pgid: Pid) {
    match killpg(pgid, Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid = pgid.as_raw(), error = %e, "cannot kill a process group"),
    }
}

fn wait_kill_reap(
    mut child: Child,
    state: Arc<Mutex<Reaped>>,
    tx: oneshot::Sender<io::Result<ExitStatus>>,
) {
    let pid = Pid::from_raw(child.id() as i32);
    loop {
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Err(Errno::EINTR) => continue,
            Ok(_) => break,
            Err(e) => {
                // Nothing to gain from waiting differently: `wait` below reports the truth.
                tracing::warn!(pid = pid.as_raw(), error = %e, "waitid failed");
                break;
            }
        }
    }
    let mut reaped = state.lock().unwrap_or_else(PoisonError::into_inner);
    // Background processes the step left behind would outlive it and hold the output pipe.
    kill_group(pid);
    let status = child.wait();
    reaped.0 = true;
    drop(reaped);
    let _ = tx.send(status);
}

struct SpawnRequest {
    command: Command,
    reply: oneshot::Sender<io::Result<Child>>,
}

/// Starts `command` on the spawner thread.
async fn spawn(command: Command) -> io::Result<Child> {
    let (reply, rx) = oneshot::channel();
    spawner()
        .send(SpawnRequest { command, reply })
        .map_err(|_| io::Error::other("the process spawner thread is not running"))?;
    rx.await
        .map_err(|_| io::Error::other("the process spawner thread ended"))?
}

fn spawner() -> &'static mpsc::Sender<SpawnRequest> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let started = std::thread::Builder::new()
            .name("buildmesh-spawner".into())
            .spawn(move || {
                for SpawnRequest { mut command, reply } in rx {
                    let result = command.spawn();
                    drop(command);
                    if let Err(Ok(child)) = reply.send(result) {
                        // The build was dropped while this was being started.
                        abandon(child);
                    }
                }
            });
        if let Err(e) = started {
            // Every later spawn then fails with "not running": the builds end in Exception.
            tracing::error!(error = %e, "cannot start the process spawner thread");
        }
        tx
    })
}

fn abandon(mut child: Child) {
    kill_group(Pid::from_raw(child.id() as i32));
    let _ = std::thread::Builder::new()
        .name("buildmesh-reap".into())
        .spawn(move || child.wait());
}

/// Runs a short command to completion and returns its output: for `git rev-parse` and the like.
pub(crate) async fn output_of(
    supervisor: Option<&Path>,
    cmd: &ProcessCmd,
    timeout: Duration,
    cancel: &CancellationToken,
) -> (RunEnd, Vec<u8>) {
    let mut capture = Capture::new(&[]);
    let end = run_process(supervisor, cmd, &mut capture, timeout, cancel).await;
    (end, capture.finish())
}
