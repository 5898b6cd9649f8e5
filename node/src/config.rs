//! A node's configuration file (TOML). Paths are relative to the file's directory. Every field
//! is documented in [`EXAMPLE`], which `buildmesh init-node` writes.
//!
//! One job, reading and checking the file, hence one module: most of its length is the
//! commented example and a check per entry that names the entry when it refuses it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::Multiaddr;
use serde::Deserialize;

/// A configuration that cannot be used, naming the entry at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, or an entry of the wrong type or an unknown entry.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// An entry whose value is not usable.
    #[error("{path}: entry `{entry}`: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The entry.
        entry: String,
        /// What is wrong.
        message: String,
    },
}

/// The commented example written by `buildmesh init-node`.
pub const EXAMPLE: &str = r#"# buildmesh node configuration. Paths are relative to this file.

# This node's secret key (buildmesh keygen --out node.key). Keep it mode 0600.
key = "node.key"
# The mesh's genesis document, as every node of the mesh has it.
genesis = "genesis.bm"
# This node's admission, signed by a maintainer (buildmesh admit ...).
admission = "node.adm"
# Where the node keeps its database.
data_dir = "data"
# libp2p addresses to listen on (TCP and QUIC; "/memory/N" addresses alone run the node on
# libp2p's in-process memory transport, for tests).
listen = ["/ip4/0.0.0.0/tcp/7701", "/ip4/0.0.0.0/udp/7701/quic-v1"]
# Peers to dial at start and whenever the connection drops; /p2p/ID may be left out.
bootstrap = []
# The read-only HTTP API (status, builds, logs, nodes, metrics) and the web console
# (http://127.0.0.1:7700/). Loopback by default.
api = "127.0.0.1:7700"
# The web console alone (its pages, /events and the badges; no API, no write), for an address
# that faces a network. Off by default.
# web = "0.0.0.0:8010"
# Whether the console shows owners' whole mail addresses (otherwise the part before the @).
show_owner_addresses = false

[mesh]
# How often this node says it is alive (in a mesh of more than 25 admitted nodes, this times
# one more for every further 25: every heartbeat reaches every node).
heartbeat_interval = "1s"
# A node not heard from for this long is shown as not live (longer for a node that says it
# beats less often, by as much).
liveness_window = "3s"
# How often version vectors are compared with a random peer.
sync_interval = "5s"
# A peer that has not shown a valid admission this long after connecting is dropped.
door_timeout = "5s"
# How many peers to keep connections to (beyond the bootstrap peers).
max_peers = 12
# How many nodes besides its worker copy a red build's logs as soon as its result arrives
# (the same ones on every node, chosen by the log's hash); any node fetches a log on demand.
red_log_copies = 2

[worker]
# Builds run at once. Default: 1 if the admission has the worker role, else 0.
# max_builds = 1
# Slow machine? Every step timeout is multiplied by this.
timeout_factor = 1.0
# Clones, workspaces and step logs live here.
work_dir = "work"
# A claim lapses after this long without a progress signal; the next worker takes the job.
lease = "3s"
# The n-th worker in a job's rendezvous order waits n steps before claiming it.
claim_step = "500ms"
# A red waits this long for another host to reproduce it before the worker that failed may
# rerun it itself (when another host could run the builder at all).
confirm_wait = "10s"
# The worker stops claiming while its work directory has less free disk than this ("4GiB",
# "10%", "0" for no check; default the smaller of 4 GiB and 10 %), or while this command, run
# with sh in the work directory every 10 s, exits non-zero. It says why in its heartbeat.
# min_free_disk = "4GiB"
# check_command = "test -w /tmp"
#
# What a build step can reach (deploy/README.md says what each platform isolates).
# A step sees only PATH and LANG of the node's environment, plus these names:
# env_allow = ["CCACHE_DIR"]
# Steps (and git in their workspaces) run as this other unprivileged user: a name, UID or
# UID:GID. The node then needs root or CAP_SETUID, CAP_SETGID, CAP_KILL (and CAP_CHOWN once, to
# hand work_dir/builds to that user), and keeps its key, configuration and store to itself.
# step_user = "buildmesh-step"
# A sandbox for steps: "auto" (bubblewrap when it works here, else none), "bwrap" (refuse to
# start without it) or "none". It hides the node's files and other builders' workspaces, gives
# each step its own /tmp and PID namespace, and no network to steps with `network = false`.
# sandbox = "auto"
# Processes the step user may have at once (RLIMIT_NPROC; with step_user only). Default 4096.
# step_processes = 4096
# Resident memory a step's processes may hold together ("16GiB", "80%" of this machine's,
# "0": no limit). Default 80%.
# step_memory = "80%"

[store]
# Step logs go when their builders' `keep_logs` / `keep_passing_logs` (180 and 30 days by
# default) have passed; the signed records stay. The janitor looks this often, and deletes in
# small batches without stopping the node.
janitor_interval = "10m"
# When the database grows past this ("50GiB"; "0" for none, the default), the janitor also
# deletes the logs that would go first, until it has freed the excess.
# disk_budget = "50GiB"

[announcer]
# Announcer nodes poll the builders' repositories this often (0s: never).
poll_interval = "30s"
# File holding the push-webhook HMAC secret (GitHub, Gitea, Forgejo). The environment variable
# BUILDMESH_WEBHOOK_SECRET is used when this is not set. No secret: the webhook is off.
# webhook_secret_file = "webhook.secret"

[notifier]
# Only nodes admitted with the notifier role take part; the elected one sends the mail.
# The SMTP server, host:port. No server: this node never sends mail (it still votes).
# smtp = "mail.example.org:587"
# starttls = true
# username = "buildmesh"
# File with the SMTP password (or the environment variable BUILDMESH_SMTP_PASSWORD). The
# password is never part of the replicated configuration.
# password_file = "smtp.password"
from = "buildmesh@localhost"
to = ["buildbot-status@localhost"]
# problem: green/orange -> red (the default); change: also red -> green; failing: every red.
mode = "problem"
# Mail a worker's owner when it has been missing this long (0s: never).
missing_after = "0s"
# A red that follows commits its builder did not build waits this long for the culprit search
# to name the first bad commit; past it the mail names the range, and a follow-up names the
# culprit. Unset: as long as two builds of that builder (at least 5s); 0s: never wait.
# culprit_wait = "2m"
"#;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileForm {
    key: PathBuf,
    genesis: PathBuf,
    admission: PathBuf,
    data_dir: PathBuf,
    #[serde(default)]
    listen: Vec<String>,
    #[serde(default)]
    bootstrap: Vec<String>,
    #[serde(default)]
    api: Option<String>,
    #[serde(default)]
    web: Option<String>,
    #[serde(default)]
    show_owner_addresses: Option<bool>,
    #[serde(default)]
    mesh: MeshForm,
    #[serde(default)]
    worker: WorkerForm,
    #[serde(default)]
    announcer: AnnouncerForm,
    #[serde(default)]
    notifier: NotifierForm,
    #[serde(default)]
    store: StoreForm,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreForm {
    janitor_interval: Option<String>,
    disk_budget: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifierForm {
    smtp: Option<String>,
    starttls: Option<bool>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    from: Option<String>,
    to: Option<Vec<String>>,
    mode: Option<String>,
    missing_after: Option<String>,
    culprit_wait: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkerForm {
    max_builds: Option<u32>,
    timeout_factor: Option<f64>,
    work_dir: Option<PathBuf>,
    lease: Option<String>,
    claim_step: Option<String>,
    confirm_wait: Option<String>,
    min_free_disk: Option<String>,
    check_command: Option<String>,
    step_user: Option<String>,
    env_allow: Option<Vec<String>>,
    sandbox: Option<String>,
    step_processes: Option<u64>,
    step_memory: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnnouncerForm {
    poll_interval: Option<String>,
    webhook_secret_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MeshForm {
    heartbeat_interval: Option<String>,
    liveness_window: Option<String>,
    sync_interval: Option<String>,
    door_timeout: Option<String>,
    max_peers: Option<usize>,
    red_log_copies: Option<usize>,
}

/// A node's settings, checked.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The file this was read from.
    pub file: PathBuf,
    /// Secret key file.
    pub key: PathBuf,
    /// Genesis document file.
    pub genesis: PathBuf,
    /// Admission document file.
    pub admission: PathBuf,
    /// Database directory.
    pub data_dir: PathBuf,
    /// libp2p listen addresses (`/memory/N` ones alone select the in-process transport).
    pub listen: Vec<Multiaddr>,
    /// Peers dialled at start and redialled when lost.
    pub bootstrap: Vec<Multiaddr>,
    /// HTTP API address (port 0: any free port); it serves the web console too.
    pub api: SocketAddr,
    /// The web console's own address (pages, events, badges only), if any.
    pub web: Option<SocketAddr>,
    /// Whether the console shows owners' whole mail addresses.
    pub show_owner_addresses: bool,
    /// Mesh timing.
    pub mesh: MeshSettings,
    /// Building.
    pub worker: WorkerSettings,
    /// Announcing commits.
    pub announcer: AnnouncerSettings,
    /// Mail.
    pub notifier: NotifierSettings,
    /// Retention.
    pub store: StoreSettings,
}

/// How long the node keeps what, on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreSettings {
    /// How often the janitor deletes expired step logs. Default 10 min.
    pub janitor_interval: Duration,
    /// The database size past which the janitor deletes the logs due first; `None`: no budget.
    pub disk_budget: Option<u64>,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            janitor_interval: Duration::from_secs(600),
            disk_budget: None,
        }
    }
}

/// How this node mails, when it holds the notifier lease.
#[derive(Clone, Debug)]
pub struct NotifierSettings {
    /// SMTP server host and port; `None`: no mail from this node.
    pub smtp: Option<(String, u16)>,
    /// Upgrade with STARTTLS. Default false.
    pub starttls: bool,
    /// SMTP user.
    pub username: Option<String>,
    /// SMTP password (read from `password_file` or `BUILDMESH_SMTP_PASSWORD`).
    pub password: Option<String>,
    /// The file it was read from, kept private to the node when steps run as another user.
    pub password_file: Option<PathBuf>,
    /// Sender address.
    pub from: String,
    /// The list address(es).
    pub to: Vec<String>,
    /// Which transitions mail.
    pub mode: buildmesh_protocol::transitions::Mode,
    /// Mail an owner when a worker is missing this long; `None`: never.
    pub missing_after: Option<Duration>,
    /// How long a red's mail waits for its culprit search; `None`: two builds of the builder
    /// (at least [`MIN_CULPRIT_WAIT`]).
    pub culprit_wait: Option<Duration>,
}

/// The shortest wait of a red's mail for its culprit search when `culprit_wait` is unset: a
/// search takes a few rounds of claims and checkouts even when the builds themselves are quick.
pub const MIN_CULPRIT_WAIT: Duration = Duration::from_secs(5);

/// How this node builds.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// Builds at once; `None`: 1 with the worker role, else 0.
    pub max_builds: Option<u32>,
    /// Multiplies every step timeout. Default 1.0.
    pub timeout_factor: f64,
    /// Clones, workspaces, logs. Default `work` beside the config.
    pub work_dir: PathBuf,
    /// Claim lease. Default 3 s.
    pub lease: Duration,
    /// Rank step. Default 500 ms.
    pub claim_step: Duration,
    /// How long a red's confirmation waits for another host. Default 10 s.
    pub confirm_wait: Duration,
    /// The free-disk floor of the work directory. Default the smaller of 4 GiB and 10 %.
    pub min_free_disk: crate::selfcheck::DiskFloor,
    /// A command that must exit 0 for the worker to claim.
    pub check_command: Option<String>,
    /// The `buildmesh` binary that supervises step processes (default: this program, when it
    /// is `buildmesh`).
    pub supervisor: Option<PathBuf>,
    /// Steps run as this user; `None`: as the node.
    pub step_user: Option<crate::executor::StepUser>,
    /// Names a step takes from the node's environment besides PATH and LANG.
    pub env_allow: Vec<String>,
    /// Whether steps run in a sandbox. Default [`SandboxMode::Auto`].
    pub sandbox: SandboxMode,
    /// RLIMIT_NPROC of the step user. Default 4096.
    pub step_processes: u64,
    /// The resident memory a step may hold, in bytes; `None`: no limit. Default 80 % of RAM.
    pub step_memory: Option<u64>,
}

/// `[worker] sandbox`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SandboxMode {
    /// bubblewrap when it runs here, else none (said once in the log).
    #[default]
    Auto,
    /// bubblewrap, or the node does not start.
    Bwrap,
    /// No sandbox.
    None,
}

/// This machine's memory, from `/proc/meminfo`.
fn total_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// How this node announces commits (with the announcer role).
#[derive(Clone, Debug)]
pub struct AnnouncerSettings {
    /// Git poll period; `None`: no polling. Default 30 s.
    pub poll_interval: Option<Duration>,
    /// The push-webhook secret file.
    pub webhook_secret_file: Option<PathBuf>,
}

/// Timing of liveness, anti-entropy and the door.
#[derive(Clone, Debug)]
pub struct MeshSettings {
    /// Heartbeat period. Default 1 s.
    pub heartbeat_interval: Duration,
    /// Silence after which a node is not live. Default 3 s.
    pub liveness_window: Duration,
    /// Anti-entropy period. Default 5 s.
    pub sync_interval: Duration,
    /// Time a peer has to show its admission. Default 5 s.
    pub door_timeout: Duration,
    /// Connections kept beyond the bootstrap peers. Default 12.
    pub max_peers: usize,
    /// Nodes besides its worker that copy a red build's logs at once. Default 2.
    pub red_log_copies: usize,
}

impl Default for MeshSettings {
    fn default() -> Self {
        MeshSettings {
            heartbeat_interval: Duration::from_secs(1),
            liveness_window: Duration::from_secs(3),
            sync_interval: Duration::from_secs(5),
            door_timeout: Duration::from_secs(5),
            max_peers: 12,
            red_log_copies: 2,
        }
    }
}

impl NodeConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Checks the text of a configuration file found at `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let form: FileForm = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let invalid = |entry: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            entry: entry.to_string(),
            message,
        };
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let addrs = |entry: &str, list: &[String]| -> Result<Vec<Multiaddr>, ConfigError> {
            list.iter()
                .map(|s| {
                    s.parse::<Multiaddr>()
                        .map_err(|e| invalid(entry, format!("`{s}` is not a multiaddr: {e}")))
                })
                .collect()
        };
        let duration = |entry: &str, v: &Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(s) => match humantime::parse_duration(s) {
                Ok(d) if !d.is_zero() => Ok(d),
                Ok(_) => Err(invalid(entry, "must be more than zero".into())),
                Err(e) => Err(invalid(
                    entry,
                    format!("`{s}` is not a duration such as \"2s\": {e}"),
                )),
            },
        };
        let listen = addrs("listen", &form.listen)?;
        if listen.is_empty() {
            return Err(invalid("listen", "no address to listen on".into()));
        }
        let api = match &form.api {
            None => SocketAddr::from(([127, 0, 0, 1], 7700)),
            Some(s) => s
                .parse()
                .map_err(|e| invalid("api", format!("`{s}` is not host:port: {e}")))?,
        };
        let web = match &form.web {
            None => None,
            Some(s) => Some(
                s.parse()
                    .map_err(|e| invalid("web", format!("`{s}` is not host:port: {e}")))?,
            ),
        };
        let d = MeshSettings::default();
        let mesh = MeshSettings {
            heartbeat_interval: duration(
                "mesh.heartbeat_interval",
                &form.mesh.heartbeat_interval,
                d.heartbeat_interval,
            )?,
            liveness_window: duration(
                "mesh.liveness_window",
                &form.mesh.liveness_window,
                d.liveness_window,
            )?,
            sync_interval: duration(
                "mesh.sync_interval",
                &form.mesh.sync_interval,
                d.sync_interval,
            )?,
            door_timeout: duration("mesh.door_timeout", &form.mesh.door_timeout, d.door_timeout)?,
            max_peers: form.mesh.max_peers.unwrap_or(d.max_peers),
            red_log_copies: form.mesh.red_log_copies.unwrap_or(d.red_log_copies),
        };
        let zero_ok = |entry: &str, v: &Option<String>| -> Result<Option<Duration>, ConfigError> {
            match v {
                None => Ok(None),
                Some(s) => humantime::parse_duration(s).map(Some).map_err(|e| {
                    invalid(
                        entry,
                        format!("`{s}` is not a duration such as \"30s\": {e}"),
                    )
                }),
            }
        };
        let timeout_factor = form.worker.timeout_factor.unwrap_or(1.0);
        if !(timeout_factor.is_finite() && timeout_factor > 0.0) {
            return Err(invalid(
                "worker.timeout_factor",
                "must be a positive number".into(),
            ));
        }
        let supervisor = std::env::current_exe()
            .ok()
            .filter(|p| p.file_name().is_some_and(|n| n == "buildmesh"));
        let worker = WorkerSettings {
            max_builds: form.worker.max_builds,
            timeout_factor,
            work_dir: resolve(form.worker.work_dir.as_deref().unwrap_or(Path::new("work"))),
            lease: duration("worker.lease", &form.worker.lease, Duration::from_secs(3))?,
            claim_step: duration(
                "worker.claim_step",
                &form.worker.claim_step,
                Duration::from_millis(500),
            )?,
            confirm_wait: duration(
                "worker.confirm_wait",
                &form.worker.confirm_wait,
                Duration::from_secs(10),
            )?,
            min_free_disk: match &form.worker.min_free_disk {
                None => crate::selfcheck::DiskFloor::Default,
                Some(s) => s
                    .parse()
                    .map_err(|e: String| invalid("worker.min_free_disk", e))?,
            },
            check_command: form
                .worker
                .check_command
                .clone()
                .filter(|c| !c.trim().is_empty()),
            step_user: match &form.worker.step_user {
                None => None,
                Some(u) => Some(
                    crate::executor::StepUser::parse(u)
                        .map_err(|e| invalid("worker.step_user", e))?,
                ),
            },
            env_allow: form.worker.env_allow.clone().unwrap_or_default(),
            sandbox: match form.worker.sandbox.as_deref() {
                None | Some("auto") => SandboxMode::Auto,
                Some("bwrap") => SandboxMode::Bwrap,
                Some("none") => SandboxMode::None,
                Some(other) => {
                    return Err(invalid(
                        "worker.sandbox",
                        format!("`{other}` is not one of \"auto\", \"bwrap\", \"none\""),
                    ));
                }
            },
            step_processes: match form.worker.step_processes {
                Some(0) => {
                    return Err(invalid(
                        "worker.step_processes",
                        "must be more than zero".into(),
                    ));
                }
                Some(n) => n,
                None => 4096,
            },
            step_memory: {
                let floor = match &form.worker.step_memory {
                    None => crate::selfcheck::DiskFloor::Percent(80.0),
                    Some(s) => s
                        .parse()
                        .map_err(|e: String| invalid("worker.step_memory", e))?,
                };
                let total = total_memory().unwrap_or(u64::MAX);
                Some(floor.bytes(total)).filter(|b| *b > 0 && *b != u64::MAX)
            },
            supervisor,
        };
        if worker.step_user.as_ref().is_some_and(|u| u.uid == 0) {
            return Err(invalid(
                "worker.step_user",
                "steps must not run as root".into(),
            ));
        }
        for name in &worker.env_allow {
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(invalid(
                    "worker.env_allow",
                    format!("`{name}` is not an environment variable name"),
                ));
            }
        }
        let poll = zero_ok("announcer.poll_interval", &form.announcer.poll_interval)?
            .unwrap_or(Duration::from_secs(30));
        let announcer = AnnouncerSettings {
            poll_interval: (!poll.is_zero()).then_some(poll),
            webhook_secret_file: form.announcer.webhook_secret_file.as_deref().map(resolve),
        };
        let n = &form.notifier;
        let smtp = match &n.smtp {
            None => None,
            Some(s) => {
                let (host, port) = s
                    .rsplit_once(':')
                    .ok_or_else(|| invalid("notifier.smtp", format!("`{s}` is not host:port")))?;
                let port = port
                    .parse()
                    .map_err(|_| invalid("notifier.smtp", format!("`{s}` has no valid port")))?;
                Some((host.to_string(), port))
            }
        };
        let password = match &n.password_file {
            Some(p) => Some(
                std::fs::read_to_string(resolve(p))
                    .map_err(|e| {
                        invalid(
                            "notifier.password_file",
                            format!("cannot read {}: {e}", p.display()),
                        )
                    })?
                    .trim()
                    .to_string(),
            ),
            None => std::env::var("BUILDMESH_SMTP_PASSWORD").ok(),
        };
        let mode = match &n.mode {
            None => Default::default(),
            Some(m) => m.parse().map_err(|e: String| invalid("notifier.mode", e))?,
        };
        let notifier = NotifierSettings {
            smtp,
            starttls: n.starttls.unwrap_or(false),
            username: n.username.clone(),
            password,
            password_file: n.password_file.as_deref().map(resolve),
            from: n
                .from
                .clone()
                .unwrap_or_else(|| "buildmesh@localhost".into()),
            to: n
                .to
                .clone()
                .unwrap_or_else(|| vec!["buildbot-status@localhost".into()]),
            mode,
            missing_after: zero_ok("notifier.missing_after", &n.missing_after)?
                .filter(|d| !d.is_zero()),
            culprit_wait: zero_ok("notifier.culprit_wait", &n.culprit_wait)?,
        };
        for (entry, addr) in std::iter::once(("notifier.from", &notifier.from))
            .chain(notifier.to.iter().map(|t| ("notifier.to", t)))
        {
            if addr.parse::<lettre::Address>().is_err() {
                return Err(invalid(entry, format!("`{addr}` is not a mail address")));
            }
        }
        if mesh.liveness_window < mesh.heartbeat_interval {
            return Err(invalid(
                "mesh.liveness_window",
                "shorter than mesh.heartbeat_interval: every node would look dead".into(),
            ));
        }
        let store = StoreSettings {
            janitor_interval: duration(
                "store.janitor_interval",
                &form.store.janitor_interval,
                StoreSettings::default().janitor_interval,
            )?,
            disk_budget: match &form.store.disk_budget {
                None => None,
                Some(b) => match b.parse::<crate::selfcheck::DiskFloor>() {
                    Ok(crate::selfcheck::DiskFloor::Bytes(0)) => None,
                    Ok(crate::selfcheck::DiskFloor::Bytes(n)) => Some(n),
                    Ok(_) => {
                        return Err(invalid(
                            "store.disk_budget",
                            format!("`{b}` is not a size such as \"50GiB\""),
                        ));
                    }
                    Err(e) => return Err(invalid("store.disk_budget", e)),
                },
            },
        };
        let config = NodeConfig {
            file: path.to_path_buf(),
            key: resolve(&form.key),
            genesis: resolve(&form.genesis),
            admission: resolve(&form.admission),
            data_dir: resolve(&form.data_dir),
            listen,
            bootstrap: addrs("bootstrap", &form.bootstrap)?,
            api,
            web,
            show_owner_addresses: form.show_owner_addresses.unwrap_or(false),
            mesh,
            worker,
            announcer,
            notifier,
            store,
        };
        for (entry, file) in [
            ("key", &config.key),
            ("genesis", &config.genesis),
            ("admission", &config.admission),
        ] {
            if !file.is_file() {
                return Err(invalid(entry, format!("{} does not exist", file.display())));
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with_files() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in ["node.key", "genesis.bm", "node.adm"] {
            std::fs::write(d.path().join(f), b"x").unwrap();
        }
        d
    }

    #[test]
    fn the_example_parses() {
        let d = dir_with_files();
        let c = NodeConfig::parse(&d.path().join("node.toml"), EXAMPLE).unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.mesh.liveness_window, Duration::from_secs(3));
        assert_eq!(c.key, d.path().join("node.key"));
    }

    #[test]
    fn a_bad_entry_is_named() {
        let d = dir_with_files();
        let p = d.path().join("node.toml");
        let e = NodeConfig::parse(&p, &EXAMPLE.replace("\"3s\"", "\"soon\"")).unwrap_err();
        assert!(e.to_string().contains("mesh.liveness_window"), "{e}");
        let e = NodeConfig::parse(&p, &EXAMPLE.replace("/ip4/0.0.0.0/tcp/7701", "tcp:7701"))
            .unwrap_err();
        assert!(e.to_string().contains("`listen`"), "{e}");
        let e = NodeConfig::parse(&p, &EXAMPLE.replace("data_dir", "datadir")).unwrap_err();
        assert!(e.to_string().contains("datadir"), "{e}");
        let e =
            NodeConfig::parse(&p, &EXAMPLE.replace("\"node.adm\"", "\"missing.adm\"")).unwrap_err();
        assert!(
            e.to_string().contains("`admission`") && e.to_string().contains("missing.adm"),
            "{e}"
        );
        let e = NodeConfig::parse(
            &p,
            &EXAMPLE.replace("timeout_factor = 1.0", "timeout_factor = -2.0"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("worker.timeout_factor"), "{e}");
        let e = NodeConfig::parse(&p, "key = 1").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    #[test]
    fn the_store_keys_are_read_and_bad_ones_named() {
        let d = dir_with_files();
        let p = d.path().join("node.toml");
        let c = NodeConfig::parse(&p, EXAMPLE).unwrap();
        assert_eq!(c.store, StoreSettings::default());
        let with = |v: &str| EXAMPLE.replace("# disk_budget = \"50GiB\"", v);
        let c = NodeConfig::parse(&p, &with("disk_budget = \"2GiB\"")).unwrap();
        assert_eq!(c.store.disk_budget, Some(2 << 30));
        let c = NodeConfig::parse(&p, &with("disk_budget = \"0\"")).unwrap();
        assert_eq!(c.store.disk_budget, None);
        for bad in ["disk_budget = \"10%\"", "disk_budget = \"big\""] {
            let e = NodeConfig::parse(&p, &with(bad)).unwrap_err();
            assert!(e.to_string().contains("store.disk_budget"), "{bad}: {e}");
        }
        let e = NodeConfig::parse(
            &p,
            &EXAMPLE.replace("janitor_interval = \"10m\"", "janitor_interval = \"often\""),
        )
        .unwrap_err();
        assert!(e.to_string().contains("store.janitor_interval"), "{e}");
    }

    #[test]
    fn the_step_keys_are_read_and_bad_ones_named() {
        let d = dir_with_files();
        let p = d.path().join("node.toml");
        let with = |extra: &str| {
            EXAMPLE.replace(
                "# step_user = \"buildmesh-step\"",
                &format!("step_user = \"10002:10003\"\n{extra}"),
            )
        };
        let c =
            NodeConfig::parse(&p, &with("step_memory = \"1GiB\"\nenv_allow = [\"CC\"]")).unwrap();
        let u = c.worker.step_user.unwrap();
        assert_eq!((u.uid, u.gid), (10002, 10003));
        assert_eq!(c.worker.step_memory, Some(1 << 30));
        assert_eq!(c.worker.env_allow, ["CC"]);
        assert_eq!(c.worker.sandbox, SandboxMode::Auto);
        assert_eq!(c.worker.step_processes, 4096);
        // Defaults: no step user, memory 80 % of this machine's.
        let c = NodeConfig::parse(&p, EXAMPLE).unwrap();
        assert!(c.worker.step_user.is_none());
        assert!(c.worker.step_memory.is_some_and(|m| m > 0));
        let c = NodeConfig::parse(&p, &with("step_memory = \"0\"")).unwrap();
        assert_eq!(c.worker.step_memory, None);
        for (bad, entry) in [
            ("sandbox = \"firejail\"", "worker.sandbox"),
            ("step_memory = \"lots\"", "worker.step_memory"),
            ("step_processes = 0", "worker.step_processes"),
            ("env_allow = [\"A=B\"]", "worker.env_allow"),
        ] {
            let e = NodeConfig::parse(&p, &with(bad)).unwrap_err();
            assert!(e.to_string().contains(entry), "{bad}: {e}");
        }
        let root = EXAMPLE.replace("# step_user = \"buildmesh-step\"", "step_user = \"0\"");
        let e = NodeConfig::parse(&p, &root).unwrap_err();
        assert!(e.to_string().contains("worker.step_user"), "{e}");
    }
}
