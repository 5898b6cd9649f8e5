//! At start: how this worker isolates its build steps, checked before the first claim.
//!
//! The rules of isolation live in [`crate::executor`] (`isolate`); this module turns the
//! `[worker]` settings into them and proves they hold on this machine: the step user can be
//! become, the node's own files are private, and bubblewrap runs (or the node says why not).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{NodeConfig, SandboxMode};
use crate::executor::{Confinement, Isolation, Sandbox, check_private};
use crate::node::NodeError;

/// How long a probe of the step user or the sandbox may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// The isolation of this node's steps, as its configuration asks and this machine allows.
pub async fn isolation(config: &NodeConfig) -> Result<Isolation, NodeError> {
    let w = &config.worker;
    let fail = |m: String| NodeError::Isolation(m);
    let mut iso = Isolation {
        step_user: w.step_user.clone(),
        env_allow: w.env_allow.clone(),
        sandbox: None,
        max_processes: Some(w.step_processes),
        max_memory: w.step_memory,
    };
    if w.supervisor.is_none() {
        // Only `buildmesh supervise` counts a step's memory (an embedding program, a test).
        tracing::warn!(
            "this program is not the buildmesh binary: steps run without memory and process limits"
        );
        iso.max_memory = None;
        iso.max_processes = None;
    }
    if let Some(user) = &w.step_user {
        if w.supervisor.is_none() {
            return Err(fail(
                "worker.step_user: steps run as another user through `buildmesh supervise`, \
                 and this program is not the buildmesh binary"
                    .into(),
            ));
        }
        if user.uid == nix::unistd::geteuid().as_raw() {
            return Err(fail(format!(
                "worker.step_user: {} is the node's own user; give steps a user of their own",
                user.uid
            )));
        }
        let mut private: Vec<(&'static str, &Path)> = vec![
            ("the node key", &config.key),
            ("the node configuration", &config.file),
            ("the store", &config.data_dir),
        ];
        if let Some(f) = &config.announcer.webhook_secret_file {
            private.push(("the webhook secret", f));
        }
        if let Some(f) = &config.notifier.password_file {
            private.push(("the SMTP password", f));
        }
        for (what, path) in private {
            check_private(what, path).map_err(|e| fail(e.to_string()))?;
        }
        prepare(config, &iso)?;
        probe(config, &iso.confinement(false), &["true".into()])
            .await
            .map_err(|e| {
                fail(format!(
                    "worker.step_user: cannot run a process as {}:{} (the node needs root, or \
                     CAP_SETUID and CAP_SETGID): {e}",
                    user.uid, user.gid
                ))
            })?;
    }
    if w.sandbox != SandboxMode::None {
        match sandbox(config, &iso).await {
            Ok(s) => {
                tracing::info!(bwrap = %s.bwrap.display(), "build steps run in a bubblewrap sandbox");
                iso.sandbox = Some(s);
            }
            Err(why) if w.sandbox == SandboxMode::Bwrap => {
                return Err(fail(format!("worker.sandbox = \"bwrap\": {why}")));
            }
            Err(why) => {
                tracing::warn!(%why, "build steps run without a sandbox");
            }
        }
    }
    Ok(iso)
}

/// The work directory as steps need it (idempotent, and cheap once in place: the step user's
/// check and the sandbox's probe both need it, and every build makes sure of it again).
fn prepare(config: &NodeConfig, iso: &Isolation) -> Result<(), NodeError> {
    crate::executor::prepare_work_dir(&config.worker.work_dir, iso)
        .map_err(|e| NodeError::Isolation(format!("worker.work_dir: {e}")))
}

/// bubblewrap, when it is installed and runs here as steps would run it.
async fn sandbox(config: &NodeConfig, iso: &Isolation) -> Result<Sandbox, String> {
    if config.worker.supervisor.is_none() {
        return Err("this program is not the buildmesh binary that supervises steps".into());
    }
    let bwrap = find_program("bwrap").ok_or("bwrap is not installed (Debian: bubblewrap)")?;
    let mut hide: Vec<PathBuf> = vec![
        config.data_dir.clone(),
        config.worker.work_dir.join("cache"),
    ];
    for file in [&config.key, &config.file] {
        if let Some(dir) = file.parent() {
            hide.push(dir.to_path_buf());
        }
    }
    for f in [
        &config.announcer.webhook_secret_file,
        &config.notifier.password_file,
    ]
    .into_iter()
    .flatten()
    {
        if let Some(dir) = f.parent() {
            hide.push(dir.to_path_buf());
        }
    }
    let hide: Vec<PathBuf> = hide
        .into_iter()
        .map(|p| std::path::absolute(&p).unwrap_or(p))
        .collect();
    let builds = std::path::absolute(config.worker.work_dir.join("builds"))
        .map_err(|e| format!("work directory: {e}"))?;
    // Without a step user an unusable work directory is the builds' problem (exceptions), not
    // the node's: here it only means no sandbox.
    prepare(config, iso).map_err(|e| e.to_string())?;
    let sandbox = Sandbox { bwrap, hide };
    let with = Isolation {
        sandbox: Some(sandbox.clone()),
        ..iso.clone()
    };
    let argv = with.sandboxed(vec!["true".into()], &builds, &builds, &builds, false);
    probe(config, &iso.confinement(false), &argv).await?;
    Ok(sandbox)
}

/// Runs `argv` through the supervisor as a step's process would run, and says why it failed.
async fn probe(
    config: &NodeConfig,
    confine: &Confinement,
    argv: &[std::ffi::OsString],
) -> Result<(), String> {
    let Some(supervisor) = &config.worker.supervisor else {
        return Err("no supervisor".into());
    };
    let mut cmd = tokio::process::Command::new(supervisor);
    cmd.arg("supervise")
        .args(confine.args())
        .arg("--")
        .args(argv)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        // As the executor does: in a container this node is PID 1, which the supervisor would
        // otherwise take for init, its parent gone.
        .env(crate::executor::PARENT_ENV, std::process::id().to_string())
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(PROBE_TIMEOUT, cmd.output())
        .await
        .map_err(|_| format!("no answer in {}s", PROBE_TIMEOUT.as_secs()))?
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr);
    Err(format!("{} ({})", said.trim(), out.status))
}

/// `name` in one of the directories of `PATH`.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
