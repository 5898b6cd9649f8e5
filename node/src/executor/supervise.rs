//! `buildmesh supervise [--user UID:GID] [--max-processes N] [--max-memory BYTES] -- CMD ARGS...`:
//! runs a command so that it dies with its parent, as another user and within limits.

use std::process::ExitCode;
use std::time::Duration;

use nix::sys::prctl::{set_child_subreaper, set_no_new_privs, set_pdeathsig};
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{
    Gid, Pid, Uid, getpgrp, getpid, getppid, setgroups, setpgid, setresgid, setresuid,
};
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
/// How often the resident memory of the command's processes is added up.
const MEMORY_POLL: Duration = Duration::from_millis(100);

/// What the supervisor does to the command besides watching it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Confinement {
    /// Run as this user and group (no other groups, no capabilities, no new privileges).
    pub user: Option<(u32, u32)>,
    /// `RLIMIT_NPROC`: the processes the user may have at once (the kernel counts every
    /// process of the user, so with a step user of its own this caps all its steps together).
    pub max_processes: Option<u64>,
    /// Kill the command when the resident memory of its processes adds up to more than this.
    pub max_memory: Option<u64>,
}

impl Confinement {
    /// The options of `buildmesh supervise` that ask for this.
    pub(crate) fn args(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some((uid, gid)) = self.user {
            out.extend(["--user".to_string(), format!("{uid}:{gid}")]);
        }
        if let Some(n) = self.max_processes {
            out.extend(["--max-processes".to_string(), n.to_string()]);
        }
        if let Some(n) = self.max_memory {
            out.extend(["--max-memory".to_string(), n.to_string()]);
        }
        out
    }
}

/// The body of `buildmesh supervise -- CMD ARGS...`: runs `cmd` (program and arguments) in the
/// supervisor's own process group, exits with its exit code (128 + signal if a signal killed it),
/// and kills the whole group with SIGKILL when the supervisor's parent dies or the supervisor gets
/// SIGTERM, SIGINT or SIGHUP. See the [module docs](super) for why the group is shared.
pub fn supervise(cmd: &[String], confine: &Confinement) -> ExitCode {
    ExitCode::from(supervise_status(cmd, confine))
}

/// [`supervise`] returning the exit code as a number, for callers that exit by themselves.
///
/// Everything `supervise` does happens here: it changes this process's user, limits,
/// parent-death signal, process group and signal handlers, and on a signal kills its own process
/// group (this process included), so only call it in a process started to be a supervisor.
pub fn supervise_status(cmd: &[String], confine: &Confinement) -> u8 {
    let Some((program, args)) = cmd.split_first() else {
        eprintln!("buildmesh supervise: no command given");
        return CANNOT_RUN;
    };
    // The user first: a change of credentials clears the parent-death signal.
    if let Err(e) = confine_self(confine) {
        eprintln!("buildmesh supervise: {e}");
        return CANNOT_RUN;
    }
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
    // Orphans of the command (a daemon that double-forked, a `setsid`) become ours, so they
    // stay in reach of the memory count and of the last kill.
    if let Err(e) = set_child_subreaper(true) {
        eprintln!("buildmesh supervise: cannot become a subreaper: {e}");
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
    runtime.block_on(run(program, args, confine.max_memory))
}

/// Becomes the step user with no other group, no capability and no way to gain privileges by
/// running a set-user-id program, then applies the process limit.
fn confine_self(confine: &Confinement) -> Result<(), String> {
    if let Some((uid, gid)) = confine.user {
        let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
        setgroups(&[gid]).map_err(|e| format!("cannot drop the supplementary groups: {e}"))?;
        setresgid(gid, gid, gid).map_err(|e| format!("cannot become group {gid}: {e}"))?;
        setresuid(uid, uid, uid).map_err(|e| format!("cannot become user {uid}: {e}"))?;
        // From root, the change of user cleared every capability; from an unprivileged node
        // holding CAP_SETUID (ambient), it did not, and the ambient set would pass them on.
        for set in [
            caps::CapSet::Ambient,
            caps::CapSet::Inheritable,
            caps::CapSet::Effective,
            caps::CapSet::Permitted,
        ] {
            caps::clear(None, set).map_err(|e| format!("cannot drop capabilities: {e}"))?;
        }
        set_no_new_privs().map_err(|e| format!("cannot forbid new privileges: {e}"))?;
    }
    if let Some(n) = confine.max_processes {
        setrlimit(Resource::RLIMIT_NPROC, n, n)
            .map_err(|e| format!("cannot limit the processes to {n}: {e}"))?;
    }
    Ok(())
}

async fn run(program: &str, args: &[String], max_memory: Option<u64>) -> u8 {
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
    let over_memory = async {
        match max_memory {
            Some(limit) => watch_memory(limit).await,
            None => std::future::pending().await,
        }
    };
    let code = tokio::select! {
        status = child.wait() => match status {
            Ok(s) => exit_code(s),
            Err(e) => {
                eprintln!("buildmesh supervise: cannot wait for {program}: {e}");
                kill_own_group();
                CANNOT_RUN
            }
        },
        used = over_memory => {
            eprintln!(
                "buildmesh: the step's processes held {} MiB, over the worker's limit of {} MiB (step_memory); killed",
                used.0 >> 20,
                used.1 >> 20
            );
            end_all()
        }
        // The node is gone or asks to stop: everything below goes, what left the group too.
        _ = term.recv() => end_all(),
        _ = int.recv() => end_all(),
        _ = hup.recv() => end_all(),
    };
    // What the command left behind outside the group (adopted by us as subreaper) goes too.
    kill_descendants();
    code
}

/// Resolves once the resident memory of this process's descendants adds up to more than
/// `limit` bytes, with (what they held, the limit).
async fn watch_memory(limit: u64) -> (u64, u64) {
    let mut every = tokio::time::interval(MEMORY_POLL);
    loop {
        every.tick().await;
        let used: u64 = descendants().iter().map(|p| resident_bytes(*p)).sum();
        if used > limit {
            return (used, limit);
        }
    }
}

/// Every process below this one, by parent links read from `/proc`.
fn descendants() -> Vec<i32> {
    let me = getpid().as_raw();
    // Down the children lists where the kernel keeps them: a few reads for a few processes,
    // where the walk below reads every process of the machine.
    if let Some(below) = descendants_by_children(me) {
        return below;
    }
    let mut parent_of: Vec<(i32, i32)> = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some(ppid) = parent_pid(pid) {
            parent_of.push((pid, ppid));
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![me];
    while let Some(p) = frontier.pop() {
        for (child, _) in parent_of.iter().filter(|(_, pp)| *pp == p) {
            out.push(*child);
            frontier.push(*child);
        }
    }
    out
}

/// The children of every thread of `pid`, from `/proc/PID/task/TID/children`; `None` when
/// the kernel does not keep those lists (or `pid` is gone).
fn children_of(pid: i32) -> Option<Vec<i32>> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let children = std::fs::read_to_string(task.ok()?.path().join("children")).ok()?;
        out.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
    }
    Some(out)
}

/// Every descendant of `pid` down the children lists; `None` when the kernel keeps none.
fn descendants_by_children(pid: i32) -> Option<Vec<i32>> {
    let mut out = Vec::new();
    let mut frontier = children_of(pid)?;
    while let Some(p) = frontier.pop() {
        out.push(p);
        // A process that ended meanwhile has no children left.
        frontier.extend(children_of(p).unwrap_or_default());
    }
    Some(out)
}

/// The parent of `pid`: the 4th field of `/proc/PID/stat`, after the command name in brackets.
fn parent_pid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Resident bytes of `pid` (the 2nd field of `/proc/PID/statm`, in pages); 0 once it is gone.
fn resident_bytes(pid: i32) -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let page = *PAGE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(4096)
    });
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page)
}

/// SIGKILL to every descendant, group or not. Repeated until none is left (one may fork
/// between the listing and its kill), a bounded number of times.
fn kill_descendants() {
    for _ in 0..16 {
        let left = descendants();
        if left.is_empty() {
            return;
        }
        for pid in left {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        // Reap what we adopted, so the next listing does not count zombies.
        while let Ok(status) = nix::sys::wait::waitpid(
            Pid::from_raw(-1),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        ) {
            if status == nix::sys::wait::WaitStatus::StillAlive {
                break;
            }
        }
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

/// SIGKILL to every descendant (found while the tree still stands), then to the group, this
/// process included. Only returns if the last kill failed.
fn end_all() -> u8 {
    kill_descendants();
    kill_own_group()
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
