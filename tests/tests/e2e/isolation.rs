//! Build steps that try to take the worker: a real `buildmesh run` process with a step user,
//! run as root and as the shipped unit runs it (an unprivileged user holding CAP_SETUID,
//! CAP_SETGID, CAP_KILL and CAP_CHOWN as ambient capabilities), with real steps that try to
//! read the node's secrets, write its store and clone cache, kill it, fork without end, eat
//! memory, and build a commit that is not on its branch.
//!
//! Changing users needs root: run elsewhere, the test says so and checks nothing.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use buildmesh_tests::procs::{Proc, json};
use buildmesh_tests::{GitRepo, free_port_base, wait_for};

/// The step users: `nobody` for the node run as root, another for the unprivileged node (so
/// that one test's `kill -9 -1` and process limit cannot reach the other's steps). Neither
/// owns anything of the node's.
const STEP_UID_ROOT_NODE: u32 = 65534;
const STEP_UID_UNPRIVILEGED_NODE: u32 = 10002;
/// The unprivileged node's user, as the shipped unit's `buildmesh` (any uid but 0 and the
/// step user's will do; it needs no entry in /etc/passwd).
const NODE_UID: u32 = 10001;
const SMTP_SECRET: &str = "hunter2-smtp-password";
const HOOK_SECRET: &str = "hunter2-webhook-secret";

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    // /proc/self belongs to this process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn open_to_all(p: &Path) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Each attack is a builder of one step; every `evidence` must be in its log (so the step
/// really ran and met the wall), no `never`, and the build must end as `result`.
struct Attack {
    builder: &'static str,
    run: String,
    network: bool,
    timeout: &'static str,
    result: &'static str,
    evidence: Vec<String>,
    never: Vec<String>,
}

impl Attack {
    /// A one-step attack with the network and a minute to run, that must fail.
    fn failing(
        builder: &'static str,
        run: String,
        evidence: Vec<String>,
        never: Vec<String>,
    ) -> Self {
        Attack {
            builder,
            run,
            network: true,
            timeout: "1m",
            result: "failure",
            evidence,
            never,
        }
    }
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The network interfaces of this machine but loopback.
fn host_interfaces() -> Vec<String> {
    std::fs::read_to_string("/proc/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|n| format!("{}:", n.trim())))
        .filter(|n| n != "lo:")
        .collect()
}

fn attacks(node_dir: &Path, key_text: &str, step_uid: u32, sandboxed: bool) -> Vec<Attack> {
    let key = node_dir.join("node.key");
    let config = node_dir.join("node.toml");
    let data = node_dir.join("data");
    let cache = node_dir.join("work/cache");
    // In the sandbox the node's directories are empty and read-only; outside it, another
    // user's.
    let hidden = |outside: &str| {
        if sandboxed {
            strings(&["No such file or directory"])
        } else {
            strings(&[outside])
        }
    };
    let unwritable = || {
        if sandboxed {
            strings(&["Read-only file system"])
        } else {
            strings(&["Permission denied"])
        }
    };
    let mut list = vec![
        Attack {
            builder: "whoami",
            run: "id -u; id -G".into(),
            network: true,
            timeout: "1m",
            result: "success",
            evidence: vec![format!("{step_uid}\n{step_uid}\n")],
            never: Vec::new(),
        },
        Attack::failing(
            "environment",
            "env; env | grep -q hunter2 && echo LEAKED; exit 1".into(),
            strings(&["BUILDMESH_SHA=", "HOME="]),
            strings(&["hunter2", "LEAKED", "CARGO_"]),
        ),
        Attack::failing(
            "read the key",
            format!("cat '{}'", key.display()),
            hidden("Permission denied"),
            vec![key_text.lines().next().unwrap().to_string()],
        ),
        Attack::failing(
            "read the configuration",
            format!("cat '{}'", config.display()),
            hidden("Permission denied"),
            strings(&["bootstrap ="]),
        ),
        Attack::failing(
            "read the secrets on disk",
            format!(
                "cat '{d}/webhook.secret' '{d}/smtp.password'",
                d = node_dir.display()
            ),
            hidden("Permission denied"),
            strings(&["hunter2"]),
        ),
        Attack::failing(
            "write the store",
            format!("touch '{}/poison'", data.display()),
            unwritable(),
            Vec::new(),
        ),
        Attack::failing(
            "poison the clone cache",
            format!(
                "for f in '{c}'/*.git/HEAD '{c}'/poison; do echo evil >> \"$f\" || failed=1; done; exit ${{failed:-0}}",
                c = cache.display()
            ),
            unwritable(),
            Vec::new(),
        ),
        Attack {
            builder: "kill the node",
            // The node by its pid, then every process the step user may signal.
            run: "kill -9 \"$NODE_PID\"; kill -9 -1".into(),
            network: true,
            timeout: "1m",
            result: "failure",
            // In the sandbox's PID namespace the node does not exist, and `kill -1` finds
            // nobody but the step's shell, which it spares.
            evidence: if sandboxed {
                strings(&["No such process"])
            } else {
                strings(&["not permitted", "killed by SIGKILL"])
            },
            never: Vec::new(),
        },
        Attack {
            builder: "fork bomb",
            run: "i=0; while [ $i -lt 400 ]; do sleep 30 & i=$((i+1)); done; wait".into(),
            network: true,
            timeout: "4s",
            result: "failure",
            evidence: strings(&["fork"]),
            never: Vec::new(),
        },
        Attack::failing(
            "eat memory",
            "dd if=/dev/zero of=/dev/null bs=300M count=100".into(),
            strings(&["over the worker's limit"]),
            Vec::new(),
        ),
    ];
    if sandboxed {
        list.push(Attack {
            builder: "offline",
            run: "cat /proc/net/dev; exit 1".into(),
            network: false,
            timeout: "1m",
            result: "failure",
            evidence: strings(&["lo:"]),
            never: host_interfaces(),
        });
    }
    list
}

fn builders_toml(repo: &str, node_pid: u32, attacks: &[Attack]) -> String {
    let mut t = String::from("version = 1\n");
    for a in attacks {
        t.push_str(&format!(
            "[[builder]]\nname = \"{}\"\nrepo = \"{repo}\"\nbranches = [\"main\"]\nmax_attempts = 1\n\
             env = {{ NODE_PID = \"{node_pid}\" }}\n\
             [[builder.step]]\nname = \"attack\"\nrun = '''{}'''\ntimeout = \"{}\"\n{}",
            a.builder,
            a.run,
            a.timeout,
            if a.network { "" } else { "network = false\n" }
        ));
    }
    // Only for the commit off its branch.
    t.push_str(&format!(
        "[[builder]]\nname = \"release\"\nrepo = \"{repo}\"\nbranches = [\"release\"]\nmax_attempts = 1\n\
         [[builder.step]]\nname = \"build\"\nrun = \"true\"\n"
    ));
    // Only for the commit the node is killed under: a step with processes in the background
    // and outside its process group.
    t.push_str(&format!(
        "[[builder]]\nname = \"linger\"\nrepo = \"{repo}\"\nbranches = [\"linger\"]\nmax_attempts = 1\n\
         [[builder.step]]\nname = \"build\"\nrun = \"sleep 300 & setsid sleep 300 & sleep 300\"\ntimeout = \"10m\"\n"
    ));
    t
}

/// The pids of the processes `uid` runs, from /proc.
fn processes_of(uid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let real = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|u| u.parse::<u32>().ok());
        let zombie = status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'));
        if real == Some(uid) && !zombie {
            out.push(pid);
        }
    }
    out
}

/// Starts a command whose program was just copied. Another test's thread may fork while the
/// copy's file is still open for writing; until that child execs it holds the file open, and
/// running the copy fails with "Text file busy" meanwhile: tried again for a moment.
fn spawn_copied(cmd: &mut std::process::Command) -> std::process::Child {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(26) && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r.expect("buildmesh runs"),
        }
    }
}

/// One node, run as `as_user` (None: root), with a step user and limits; every attack is built
/// and checked, then a commit announced on a branch that does not reach it.
async fn attack_a_worker(as_user: Option<u32>, step_uid: u32, sandbox: &str) {
    let dir = tempfile::tempdir().unwrap();
    open_to_all(dir.path());
    // The binary where both users can run it (a checkout under /root is not).
    let bin = dir.path().join("buildmesh");
    std::fs::copy(buildmesh_tests::binary(), &bin).unwrap();
    open_to_all(&bin);
    let base = free_port_base(1);
    let t = buildmesh_node::testnet::generate(&dir.path().join("mesh"), 1, base).unwrap();
    let node = &t.nodes[0];
    let node_dir = node.config.parent().unwrap().to_path_buf();
    let mut text = std::fs::read_to_string(&node.config).unwrap();
    text.push_str(&format!(
        "step_user = \"{step_uid}:{step_uid}\"\nstep_processes = 64\nstep_memory = \"200MiB\"\nsandbox = \"{sandbox}\"\n\
         [announcer]\nwebhook_secret_file = \"webhook.secret\"\n\
         [notifier]\npassword_file = \"smtp.password\"\n"
    ));
    std::fs::write(&node.config, text).unwrap();
    // Written as a careless owner would: readable by all. The node makes them its own.
    for (file, secret) in [
        ("webhook.secret", HOOK_SECRET),
        ("smtp.password", SMTP_SECRET),
    ] {
        let p = node_dir.join(file);
        std::fs::write(&p, secret).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    open_to_all(&dir.path().join("mesh"));
    // The genesis is public; the unprivileged node reads it.
    std::fs::set_permissions(&t.genesis, std::fs::Permissions::from_mode(0o644)).unwrap();
    let key_text = std::fs::read_to_string(&node.key).unwrap();

    let mut cmd = match as_user {
        None => std::process::Command::new(&bin),
        Some(uid) => {
            let uid = uid.to_string();
            for entry in walk(&node_dir) {
                std::os::unix::fs::chown(&entry, Some(NODE_UID), Some(NODE_UID)).unwrap();
            }
            let mut c = std::process::Command::new("setpriv");
            c.args(["--reuid", &uid, "--regid", &uid, "--clear-groups"])
                .args(["--inh-caps=+setuid,+setgid,+kill,+chown"])
                .args(["--ambient-caps=+setuid,+setgid,+kill,+chown", "--"])
                .arg(&bin);
            // The origin repository belongs to root; git refuses another user's repository
            // unless told, as the image's /etc/gitconfig tells it.
            let gitconfig = dir.path().join("node.gitconfig");
            std::fs::write(&gitconfig, "[safe]\n\tdirectory = *\n").unwrap();
            c.env("GIT_CONFIG_GLOBAL", &gitconfig);
            c
        }
    };
    cmd.args(["run", "--config"])
        .arg(&node.config)
        .env("BUILDMESH_SMTP_PASSWORD", SMTP_SECRET)
        .env("BUILDMESH_WEBHOOK_SECRET", HOOK_SECRET)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut proc = Proc(spawn_copied(&mut cmd));
    let api = node.api.clone();
    wait_for("the node to answer", Duration::from_secs(60), || async {
        json(format!("http://{api}/api/v1/nodes")).await.is_some()
    })
    .await;
    let sandboxed = sandbox != "none";
    let attacks = attacks(&node_dir, &key_text, step_uid, sandboxed);
    let repo = GitRepo::new(dir.path().join("repo"));
    let sha = repo.commit("main", &[("f", "x")], "attacked");
    repo.commit("release", &[("r", "1")], "a release branch");
    let maintainer = read_key(&t.maintainer_key);
    let genesis = buildmesh_protocol::docs::Genesis::verify(
        &buildmesh_protocol::docs::SignedDoc::from_bytes(&std::fs::read(&t.genesis).unwrap())
            .unwrap(),
    )
    .unwrap();
    let config = buildmesh_protocol::builders::BuilderConfig::from_toml(
        genesis.mesh,
        &builders_toml(&repo.url(), proc.0.id(), &attacks),
    )
    .unwrap();
    let mut doc = buildmesh_protocol::docs::SignedDoc::new(&config).unwrap();
    doc.sign(&maintainer);
    let client = reqwest::Client::new();
    buildmesh_tests::post_accepted(&format!("http://{api}/api/v1/publish"), doc.to_bytes()).await;
    wait_for("the configuration", Duration::from_secs(60), || async {
        json(format!("http://{api}/api/v1/health"))
            .await
            .is_some_and(|h| h["config_version"] == 1)
    })
    .await;
    // The node's own key announces (an announcer, not a maintainer: the branch is checked).
    let announcer = read_key(&node.key);
    let submit = |branch: &str, sha: String| {
        let req = buildmesh_protocol::wire::SignedRequest::sign(
            &announcer,
            buildmesh_protocol::wire::ApiAction::Submit {
                repo: repo.url(),
                branch: branch.into(),
                sha,
            },
            buildmesh_protocol::Timestamp::now(),
        );
        client
            .post(format!("http://{api}/api/v1/submit"))
            .body(req.to_bytes())
            .send()
    };
    let r = submit("main", sha.clone()).await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());

    let builds = finished_builds(&api, &sha, attacks.len()).await;
    for a in &attacks {
        let b = builds
            .iter()
            .find(|b| b["builder"] == a.builder)
            .unwrap_or_else(|| panic!("no build of {}", a.builder));
        let log = step_log(&api, b, "attack").await;
        assert_eq!(b["result"], a.result, "{}: {b}\n{log}", a.builder);
        for e in &a.evidence {
            assert!(
                log.contains(e.as_str()),
                "{}: `{e}` is not in its log:\n{log}",
                a.builder
            );
        }
        for n in &a.never {
            assert!(
                !log.contains(n.as_str()),
                "{}: `{n}` is in its log:\n{log}",
                a.builder
            );
        }
    }
    assert!(!node_dir.join("data/poison").exists());
    assert!(!node_dir.join("work/cache/poison").exists());
    for head in walk(&node_dir.join("work/cache"))
        .into_iter()
        .filter(|p| p.ends_with("HEAD"))
    {
        let text = std::fs::read_to_string(&head).unwrap();
        assert!(!text.contains("evil"), "{} was written", head.display());
    }

    // A commit on a fork, announced as the release branch's: not built, and the node says why.
    let forked = repo.commit("fork", &[("f", "forked")], "not on release");
    let r = submit("release", forked.clone()).await.unwrap();
    assert!(r.status().is_success());
    let builds = finished_builds(&api, &forked, 1).await;
    let b = &builds[0];
    assert_eq!(b["result"], "exception", "{b}");
    assert_eq!(b["steps"][0]["name"], "checkout", "{b}");
    let log = step_log(&api, b, "checkout").await;
    assert!(log.contains("is not on branch release"), "{log}");

    // Through all of it the node kept running and heartbeating.
    assert!(proc.0.try_wait().unwrap().is_none(), "the node died");
    let nodes = json(format!("http://{api}/api/v1/nodes")).await.unwrap();
    assert_eq!(nodes[0]["live"], true, "{nodes}");

    // Killed with SIGKILL mid-step, the node leaves none of the step user's processes behind,
    // not even one that left the step's process group.
    let lingering = repo.commit("linger", &[("l", "1")], "killed under");
    assert!(
        submit("linger", lingering.clone())
            .await
            .unwrap()
            .status()
            .is_success()
    );
    wait_for(
        "the step's three sleeps",
        Duration::from_secs(60),
        || async {
            processes_of(step_uid)
                .iter()
                .filter(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/comm"))
                        .is_ok_and(|c| c.trim() == "sleep")
                })
                .count()
                >= 3
        },
    )
    .await;
    proc.0.kill().unwrap();
    proc.0.wait().unwrap();
    wait_for(
        "no process of the step user",
        Duration::from_secs(30),
        || async { processes_of(step_uid).is_empty() },
    )
    .await;
}

/// The log of `step` of build `b` (a `/api/v1/builds` entry).
async fn step_log(api: &str, b: &serde_json::Value, step: &str) -> String {
    let id = b["id"].as_str().unwrap();
    reqwest::get(format!("http://{api}/api/v1/builds/{id}/log?step={step}"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn read_key(path: &Path) -> buildmesh_protocol::SecretKey {
    buildmesh_protocol::SecretKey::from_file_text(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every build of `sha` once `n` of them have a verdict.
async fn finished_builds(api: &str, sha: &str, n: usize) -> Vec<serde_json::Value> {
    let done = std::sync::Mutex::new(Vec::new());
    wait_for(
        "every build to finish",
        Duration::from_secs(180),
        || async {
            let Some(v) = json(format!("http://{api}/api/v1/builds?commit={sha}")).await else {
                return false;
            };
            let list: Vec<serde_json::Value> = v.as_array().cloned().unwrap_or_default();
            let finished = list
                .iter()
                .filter(|b| !["pending", "running"].contains(&b["result"].as_str().unwrap_or("")))
                .count();
            if finished >= n.min(list.len()) && !list.is_empty() {
                *done.lock().unwrap() = list;
                true
            } else {
                false
            }
        },
    )
    .await;
    done.into_inner().unwrap()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_cannot_take_a_worker_run_as_root() {
    if !is_root() {
        eprintln!("not run: changing users needs root");
        return;
    }
    buildmesh_tests::logs();
    attack_a_worker(None, STEP_UID_ROOT_NODE, "none").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_cannot_take_a_worker_run_unprivileged_in_a_sandbox() {
    if !is_root() {
        eprintln!("not run: changing users needs root");
        return;
    }
    buildmesh_tests::logs();
    let sandbox = if Path::new("/usr/bin/bwrap").exists() {
        "bwrap"
    } else {
        eprintln!("bubblewrap is not installed: the unprivileged node runs steps without it");
        "none"
    };
    attack_a_worker(Some(NODE_UID), STEP_UID_UNPRIVILEGED_NODE, sandbox).await;
}
