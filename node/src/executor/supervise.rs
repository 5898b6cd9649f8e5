//! `buildmesh supervise -- CMD ARGS...`: runs a command so that it dies with its parent.

use std::process::ExitCode;

use nix::sys::prctl::set_pdeathsig;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, getpgrp, getpid, getppid, setpgid};
use tokio::signal::unix::{SignalKind, signal};

/// The executor puts its own pid here, so the supervisor can tell whether its parent died
/// before the parent-death signal was armed (a subreaper, not only init, may adopt it).
pub(crate) const PARENT_ENV: &str = "BUILDMESH_SUPERVISOR_PARENT";

/// Exit code when the command could not be run at all (as `env` and `nice` do).
const CANNOT_RUN: u8 = 125;
/// Exit code when the command was not found (as shells do).
const NOT_FOUND: u8 = 127;
/// Exit code after SIGTERM: 128 + 15.
const TERMINATED: u8 = 143;

/// The body of `buildmesh supervise -- CMD ARGS...`: runs `cmd` (program and arguments) in the
/// supervisor's own process group, exits with its exit code (128 + signal if a signal killed it),
/// and kills the whole group with SIGKILL when the supervisor's parent dies or the supervisor gets
/// SIGTERM, SIGINT or SIGHUP. See the [module docs](super) for why the group is shared.
pub fn supervise(cmd: &[String]) -> ExitCode {
    ExitCode::from(supervise_status(cmd))
}

/// [`supervise`] returning the exit code as a number, for callers that exit by themselves.
///
/// Everything `supervise` does happens here: it changes this process's parent-death signal, its
/// process group and its signal handlers, and on a signal kills its own process group (this
/// process included), so only call it in a process started to be a supervisor.
pub fn supervise_status(cmd: &[String]) -> u8 {
    let Some((program, args)) = cmd.split_first() else {
        eprintln!("buildmesh supervise: no command given");
        return CANNOT_RUN;
    };
    if let Err(e) = set_pdeathsig(Signal::SIGTERM) {
        eprintln!("buildmesh supervise: cannot arm the parent-death signal: {e}");
        return CANNOT_RUN;
    }
    let me = getpid();
    // Killing "our group" must never reach the processes of whoever started us.
    if getpgrp() != me
        && let Err(e) = setpgid(me, me)
    {
        eprintln!("buildmesh supervise: cannot start a process group: {e}");
        return CANNOT_RUN;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("buildmesh supervise: cannot start: {e}");
            return CANNOT_RUN;
        }
    };
    runtime.block_on(run(program, args))
}

async fn run(program: &str, args: &[String]) -> u8 {
    // Handlers first: a signal between here and the spawn must not take the default action
    // after the child exists.
    let (mut term, mut int, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            eprintln!("buildmesh supervise: cannot handle signals: {e}");
            return CANNOT_RUN;
        }
    };
    if parent_gone() {
        return TERMINATED;
    }
    let mut child = match tokio::process::Command::new(program)
        .args(args)
        .env_remove(PARENT_ENV)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("buildmesh supervise: cannot run {program}: {e}");
            return if e.kind() == std::io::ErrorKind::NotFound {
                NOT_FOUND
            } else {
                CANNOT_RUN
            };
        }
    };
    tokio::select! {
        status = child.wait() => match status {
            Ok(s) => exit_code(s),
            Err(e) => {
                eprintln!("buildmesh supervise: cannot wait for {program}: {e}");
                kill_own_group();
                CANNOT_RUN
            }
        },
        _ = term.recv() => kill_own_group(),
        _ = int.recv() => kill_own_group(),
        _ = hup.recv() => kill_own_group(),
    }
}

fn parent_gone() -> bool {
    let expected = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok());
    match expected {
        Some(parent) => getppid() != Pid::from_raw(parent),
        None => getppid() == Pid::from_raw(1),
    }
}

/// SIGKILL to the whole group, this process included: the group is the command's, and the
/// supervisor has nothing left to do. Only returns if the kill failed.
fn kill_own_group() -> u8 {
    if let Err(e) = killpg(getpgrp(), Signal::SIGKILL) {
        eprintln!("buildmesh supervise: cannot kill the process group: {e}");
    }
    TERMINATED
}

fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => (code & 0xff) as u8,
        (None, Some(sig)) => (128 + sig).min(255) as u8,
        (None, None) => CANNOT_RUN,
    }
}
