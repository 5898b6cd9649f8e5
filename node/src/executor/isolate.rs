//! What a step can reach: its environment, its user, its view of the disk, its limits.
//!
//! A step runs code from the repository it builds, so it is the most exposed thing a worker
//! does. Four layers keep it from the node:
//! - **Environment**: a step sees only [`ENV_FROM_NODE`] (and the names a worker adds with
//!   `[worker] env_allow`) from the node's environment, a `HOME` and a `TMPDIR` of its own, the
//!   `BUILDMESH_*` build variables and the builder's `env`. The node's secrets
//!   (`BUILDMESH_SMTP_PASSWORD`, `BUILDMESH_WEBHOOK_SECRET`, anything else) never reach it.
//! - **User** (`[worker] step_user`): steps, and every git command that touches a workspace (a
//!   step can plant hooks and configuration there), run as another unprivileged user, with no
//!   other group, no capability and no new privileges (the supervisor drops them,
//!   [`super::Confinement`]). The node keeps its key, configuration and store readable by itself
//!   only ([`check_private`]); the clone cache is written by the node alone and read by the step
//!   user, and workspaces are cloned from it without hard links.
//! - **Sandbox** (`[worker] sandbox`, where bubblewrap runs): the step sees the file system
//!   read-only, its own builder's directory writable, a private `/tmp`, and none of the node's
//!   store, configuration, key, clone cache or other builders' workspaces; its processes live in
//!   a PID namespace of their own, and a step with `network = false` gets no network.
//! - **Limits**: the step's time (the builder's `timeout` × the worker's `timeout_factor`), the
//!   processes of the step user (`step_processes`, `RLIMIT_NPROC`), and the resident memory of
//!   the step's processes (`step_memory`, counted by the supervisor; an address-space limit
//!   would break sanitizer builds).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::supervise::Confinement;

/// The names a step takes from the node's environment, besides those `[worker] env_allow` adds.
pub const ENV_FROM_NODE: &[&str] = &["PATH", "LANG"];

/// `PATH` for a step when the node has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The unprivileged user steps run as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepUser {
    /// User id.
    pub uid: u32,
    /// Group id (the step's only group).
    pub gid: u32,
}

impl StepUser {
    /// A user name from the password database, `UID` (its group: the same number) or
    /// `UID:GID`.
    pub fn parse(s: &str) -> Result<StepUser, String> {
        let s = s.trim();
        let number = |n: &str| n.parse::<u32>().ok();
        if let Some((u, g)) = s.split_once(':') {
            return match (number(u), number(g)) {
                (Some(uid), Some(gid)) => Ok(StepUser { uid, gid }),
                _ => Err(format!("`{s}` is not UID:GID")),
            };
        }
        if let Some(uid) = number(s) {
            return Ok(StepUser { uid, gid: uid });
        }
        // /etc/passwd itself: the static binary has no NSS to ask (and a network directory
        // is no place for a build user).
        let passwd = std::fs::read_to_string("/etc/passwd")
            .map_err(|e| format!("cannot read /etc/passwd to find user `{s}`: {e}"))?;
        passwd
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split(':').collect();
                (f.len() >= 4 && f[0] == s).then(|| {
                    Some(StepUser {
                        uid: f[2].parse().ok()?,
                        gid: f[3].parse().ok()?,
                    })
                })?
            })
            .next()
            .ok_or_else(|| format!("no user `{s}` in /etc/passwd (create it, or give UID:GID)"))
    }
}

/// A bubblewrap sandbox for steps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sandbox {
    /// The `bwrap` program.
    pub bwrap: PathBuf,
    /// Directories a step must not see (the node's store, configuration, key); each is covered
    /// with an empty tmpfs.
    pub hide: Vec<PathBuf>,
}

/// How this worker confines its steps. The default confines nothing but the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Isolation {
    /// Steps and workspace git commands run as this user (needs the supervisor).
    pub step_user: Option<StepUser>,
    /// More names a step takes from the node's environment (`[worker] env_allow`).
    pub env_allow: Vec<String>,
    /// The sandbox, when this worker has one that works.
    pub sandbox: Option<Sandbox>,
    /// `RLIMIT_NPROC` of the step user.
    pub max_processes: Option<u64>,
    /// The resident memory a step's processes may hold together, in bytes.
    pub max_memory: Option<u64>,
}

impl Isolation {
    /// What the supervisor applies to a step (`limits`) or to a git command in a workspace.
    pub(crate) fn confinement(&self, limits: bool) -> Confinement {
        Confinement {
            user: self.step_user.as_ref().map(|u| (u.uid, u.gid)),
            max_processes: if limits && self.step_user.is_some() {
                self.max_processes
            } else {
                None
            },
            max_memory: if limits { self.max_memory } else { None },
        }
    }

    /// The environment a step (or a workspace git command) starts with: the allowed names of
    /// the node's own, and its own `HOME` and `TMPDIR`.
    pub(crate) fn base_env(&self, home: &Path, tmp: &Path) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = Vec::new();
        let names = ENV_FROM_NODE
            .iter()
            .copied()
            .chain(self.env_allow.iter().map(String::as_str));
        for name in names {
            if env.iter().any(|(k, _)| k == name) {
                continue;
            }
            if let Some(v) = std::env::var_os(name) {
                env.push((name.into(), v));
            }
        }
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.push(("PATH".into(), DEFAULT_PATH.into()));
        }
        env.push(("HOME".into(), home.into()));
        env.push(("TMPDIR".into(), tmp.into()));
        env
    }

    /// `argv` as the sandbox runs it, for a step of the builder whose directory is `own` (its
    /// workspaces, home and temporary directories), run in `cwd`.
    pub(crate) fn sandboxed(
        &self,
        argv: Vec<OsString>,
        own: &Path,
        builds: &Path,
        cwd: &Path,
        network: bool,
    ) -> Vec<OsString> {
        let Some(sandbox) = &self.sandbox else {
            return argv;
        };
        let mut out: Vec<OsString> = vec![sandbox.bwrap.clone().into()];
        out.extend(bwrap_args(&sandbox.hide, own, builds, network));
        out.extend(["--chdir".into(), cwd.into(), "--".into()]);
        out.extend(argv);
        out
    }
}

/// bubblewrap's options: the file system read-only, the hidden directories empty, every
/// builder's directory but `own` hidden, `own` writable; own PID, IPC and (without network)
/// network namespaces; killed with its parent.
pub(crate) fn bwrap_args(
    hide: &[PathBuf],
    own: &Path,
    builds: &Path,
    network: bool,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--die-with-parent",
        "--new-session",
        "--unshare-pid",
        "--unshare-ipc",
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/tmp",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    if !network {
        args.push("--unshare-net".into());
    }
    // Parents before children: a tmpfs over a directory would cover one mounted inside it.
    let mut covered: Vec<&Path> = hide.iter().map(PathBuf::as_path).collect();
    covered.push(builds);
    covered.sort_by_key(|p| p.components().count());
    covered.dedup();
    for dir in &covered {
        args.extend(["--tmpfs".into(), dir.into()]);
    }
    args.extend(["--bind".into(), own.into(), own.into()]);
    // Read-only once the builder's own directory is mounted inside: a step writes nowhere but
    // its own directory and /tmp.
    for dir in &covered {
        args.extend(["--remount-ro".into(), dir.into()]);
    }
    args
}

/// Why a file the node keeps to itself is not safe from the step user.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path} is {why}; steps run as another user and must not read it (chmod go-rwx it)")]
pub struct NotPrivate {
    /// Which file ("the node key", "the configuration", "the store").
    pub what: &'static str,
    /// Its path.
    pub path: PathBuf,
    /// Why.
    pub why: String,
}

/// Checks that `path` can be read by its owner alone, and makes it so when this process owns
/// it (the store directory, a key written by an older version).
pub fn check_private(what: &'static str, path: &Path) -> Result<(), NotPrivate> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let fail = |why: String| NotPrivate {
        what,
        path: path.to_path_buf(),
        why,
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("unreadable: {e}")))?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    if meta.uid() == nix::unistd::geteuid().as_raw() {
        let tight = mode & !0o077;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(tight))
            .map_err(|e| fail(format!("mode {mode:o} and cannot be changed: {e}")))?;
        tracing::info!(path = %path.display(), from = %format!("{mode:o}"), to = %format!("{tight:o}"), "made private to the node");
        return Ok(());
    }
    Err(fail(format!(
        "mode {mode:o} and owned by uid {}, not by the node",
        meta.uid()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_users_are_names_or_numbers() {
        assert_eq!(
            StepUser::parse("10002").unwrap(),
            StepUser {
                uid: 10002,
                gid: 10002
            }
        );
        assert_eq!(
            StepUser::parse("10002:100").unwrap(),
            StepUser {
                uid: 10002,
                gid: 100
            }
        );
        assert_eq!(StepUser::parse("root").unwrap().uid, 0);
        assert!(StepUser::parse("x:y").is_err());
        let e = StepUser::parse("no-such-user-here").unwrap_err();
        assert!(e.contains("no user"), "{e}");
        assert_eq!(StepUser::parse("nobody").unwrap().uid, 65534);
    }

    #[test]
    fn a_step_environment_holds_only_what_is_allowed() {
        let iso = Isolation {
            env_allow: vec!["CARGO_HOME".into()],
            ..Default::default()
        };
        let env = iso.base_env(Path::new("/h"), Path::new("/t"));
        let names: Vec<_> = env.iter().map(|(k, _)| k.to_str().unwrap()).collect();
        assert!(names.contains(&"PATH") && names.contains(&"HOME") && names.contains(&"TMPDIR"));
        for n in &names {
            assert!(
                ["PATH", "LANG", "HOME", "TMPDIR", "CARGO_HOME"].contains(n),
                "{n} reached a step"
            );
        }
    }

    #[test]
    fn the_sandbox_hides_parents_before_it_binds_the_builders_own_directory() {
        let args = bwrap_args(
            &[PathBuf::from("/n/data"), PathBuf::from("/n")],
            Path::new("/n/work/builds/b"),
            Path::new("/n/work/builds"),
            false,
        );
        let text: Vec<_> = args.iter().map(|a| a.to_str().unwrap()).collect();
        let at = |s: &str| text.iter().position(|a| *a == s).unwrap();
        assert!(at("/n") < at("/n/data"));
        assert!(at("/n/data") < at("/n/work/builds"));
        let bind = at("--bind");
        assert_eq!(
            text[bind + 1..bind + 3],
            ["/n/work/builds/b", "/n/work/builds/b"]
        );
        assert!(at("/n/work/builds") < bind);
        assert_eq!(text.iter().filter(|a| **a == "--remount-ro").count(), 3);
        assert!(text.iter().rposition(|a| *a == "--tmpfs").unwrap() < bind);
        assert!(text.contains(&"--unshare-net"));
    }
}
