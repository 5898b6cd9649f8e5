//! Builds: status, builds, log, submit, rebuild, cancel, bisect, and the step supervisor.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use buildmesh_node::BuildView;
use buildmesh_protocol::Timestamp;
use buildmesh_protocol::record::Purpose;
use buildmesh_protocol::wire::{ApiAction, SignedRequest};
use std::io::IsTerminal;

use super::mesh::{get_json, runtime, url};
use super::{NodeAddr, files};

#[derive(Debug, clap::Args)]
pub struct Status {
    #[command(flatten)]
    node: NodeAddr,
    /// Print the API's JSON as is.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct Builds {
    #[command(flatten)]
    node: NodeAddr,
    /// Only builds of this commit (a prefix of its sha is enough).
    #[arg(long)]
    commit: Option<String>,
    /// Only builds of this builder.
    #[arg(long)]
    builder: Option<String>,
    /// Print the API's JSON as is.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct Log {
    #[command(flatten)]
    node: NodeAddr,
    /// The build id (as `buildmesh builds` shows it; a prefix of the job id is enough).
    build: String,
    /// Only this step's log.
    #[arg(long)]
    step: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct Submit {
    #[command(flatten)]
    node: NodeAddr,
    /// Your secret key (announcer role, or a maintainer's).
    #[arg(long, short)]
    key: PathBuf,
    /// Repository URL as the builders name it.
    #[arg(long)]
    repo: String,
    /// Branch.
    #[arg(long)]
    branch: String,
    /// Full commit id.
    #[arg(long)]
    sha: String,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["builder", "all"])))]
pub struct Rebuild {
    #[command(flatten)]
    node: NodeAddr,
    /// Your secret key (announcer role, or a maintainer's).
    #[arg(long, short)]
    key: PathBuf,
    /// The builder, as written in the builder configuration.
    #[arg(long)]
    builder: Option<String>,
    /// Every builder of the commit.
    #[arg(long)]
    all: bool,
    /// The commit (at least 7 hex digits).
    #[arg(long)]
    sha: String,
    /// Its branch: needed only when the commit was built on several.
    #[arg(long)]
    branch: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct Cancel {
    #[command(flatten)]
    node: NodeAddr,
    /// Your secret key (a maintainer's, or the key whose request started the build).
    #[arg(long, short)]
    key: PathBuf,
    /// The build id, as `buildmesh builds` shows it.
    build: String,
    /// Return once the cancel is recorded, without waiting for the build to stop.
    #[arg(long)]
    detach: bool,
}

#[derive(Debug, clap::Args)]
pub struct Bisect {
    #[command(flatten)]
    node: NodeAddr,
    /// Your secret key (announcer role, or a maintainer's).
    #[arg(long, short)]
    key: PathBuf,
    /// The builder, as written in the builder configuration.
    #[arg(long)]
    builder: String,
    /// The branch: needed only when the bad commit was built red on several.
    #[arg(long)]
    branch: Option<String>,
    /// A commit the builder passed.
    #[arg(long)]
    good: String,
    /// A later commit it failed (on the good one's first-parent line).
    #[arg(long)]
    bad: String,
    /// Return once the search is recorded, without following it.
    #[arg(long)]
    detach: bool,
}

#[derive(Debug, clap::Args)]
pub struct Supervise {
    /// Run the command as this user and group (numbers), with no other group, no capability
    /// and no new privileges.
    #[arg(long, value_name = "UID:GID", value_parser = parse_user)]
    user: Option<(u32, u32)>,
    /// Limit the processes the user may have at once (RLIMIT_NPROC).
    #[arg(long, value_name = "N")]
    max_processes: Option<u64>,
    /// Kill the command when its processes hold more resident memory than this many bytes.
    #[arg(long, value_name = "BYTES")]
    max_memory: Option<u64>,
    /// The command to run in this process group, killed with it if the node dies.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<String>,
}

fn colour(result: &str) -> &'static str {
    match result {
        "success" => "\x1b[32m",
        "warnings" | "flaky" => "\x1b[33m",
        "failure" => "\x1b[31m",
        "unconfirmed" | "host-fault" => "\x1b[91m",
        "exception" => "\x1b[35m",
        "running" => "\x1b[36m",
        _ => "\x1b[2m",
    }
}

fn paint(result: &str, tty: bool) -> String {
    if tty {
        format!("{}{result:<11}\x1b[0m", colour(result))
    } else {
        format!("{result:<11}")
    }
}

pub fn status(args: Status) -> anyhow::Result<ExitCode> {
    let value = runtime()?.block_on(get_json(&args.node.addr, "/api/v1/status"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    let tty = std::io::stdout().is_terminal();
    println!(
        "{:<24} {:<12} {:<11} {:<12} {:<20} WORKER",
        "BUILDER", "BRANCH", "RESULT", "COMMIT", "BUILD"
    );
    let rows: Vec<buildmesh_node::api::StatusRow> = serde_json::from_value(value)?;
    for row in rows {
        let sha = row.sha.as_deref().unwrap_or("");
        let mut line = format!(
            "{:<24} {:<12} {} {:<12} {:<20} {}",
            row.builder,
            row.branch,
            paint(row.result.as_str(), tty),
            &sha[..sha.len().min(12)],
            row.build.as_deref().unwrap_or("-"),
            row.worker.map_or("-".to_string(), |w| w.short()),
        );
        let busy = row.in_progress.len();
        if busy > 0 && row.result.is_settled() {
            line.push_str(&format!("  (+{busy} newer in progress)"));
        }
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn builds(args: Builds) -> anyhow::Result<ExitCode> {
    // Builder names are written as people write them ("AMD64 Debian root 3.x"): encoded.
    let mut url = reqwest::Url::parse("http://node/api/v1/builds").expect("a constant URL");
    {
        let mut query = url.query_pairs_mut();
        if let Some(c) = &args.commit {
            query.append_pair("commit", c);
        }
        if let Some(b) = &args.builder {
            query.append_pair("builder", b);
        }
    }
    let path = format!("/api/v1/builds?{}", url.query().unwrap_or_default());
    let value = runtime()?.block_on(get_json(&args.node.addr, &path))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    let builds: Vec<BuildView> = serde_json::from_value(value)?;
    let tty = std::io::stdout().is_terminal();
    println!(
        "{:<20} {:<24} {:<12} {:<12} {:<11} {:>7}  WORKER",
        "BUILD", "BUILDER", "BRANCH", "COMMIT", "RESULT", "SECONDS"
    );
    for b in builds {
        let secs = match (b.started, b.finished) {
            (Some(s), Some(f)) => format!("{:.1}", f.since(s).as_secs_f64()),
            _ => "-".into(),
        };
        let worker = b.worker.map(|w| w.short()).unwrap_or_else(|| "-".into());
        println!(
            "{:<20} {:<24} {:<12} {:<12} {} {:>7}  {}",
            b.id,
            b.builder,
            b.branch,
            &b.sha[..b.sha.len().min(12)],
            paint(b.result.as_str(), tty),
            secs,
            worker
        );
        match b.purpose {
            Purpose::Build => {}
            Purpose::Confirm { job, attempt, .. } => println!(
                "{:<20}   confirms the red of build {}-{attempt}",
                "",
                &job.to_string()[..16]
            ),
            Purpose::Probe { bisection, .. } => println!(
                "{:<20}   probe of culprit search {}",
                "",
                &bisection.to_string()[..16]
            ),
            Purpose::Rebuild { by, .. } => {
                println!("{:<20}   rebuild asked for by {}", "", by.short())
            }
            Purpose::Revalidate { worker, n, .. } => println!(
                "{:<20}   re-validation {n} of quarantined worker {}",
                "",
                worker.short()
            ),
        }
        if let Some(c) = &b.confirmation {
            let by = c.worker.map(|w| w.short()).unwrap_or_else(|| "-".into());
            let what = match c.result.as_str() {
                "failure" if c.same_host => "reproduced on the same host only".to_string(),
                "failure" => "reproduced on another host".to_string(),
                "pending" | "running" => "confirming on another host".to_string(),
                other => format!("not reproduced: {other} on another host"),
            };
            println!("{:<20}   {what} (build {}, worker {by})", "", c.build);
        }
        for st in &b.steps {
            if st.result != buildmesh_protocol::record::ResultCode::Success {
                println!(
                    "{:<20}   step {:<16} {} exit {:?}",
                    "", st.name, st.result, st.exit_code
                );
                // The failing tests a flaky step kept (the run that failed before the pass).
                for l in &st.failing_lines {
                    println!("{:<20}     {l}", "");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn log(args: Log) -> anyhow::Result<ExitCode> {
    let mut path = format!("/api/v1/builds/{}/log", args.build);
    if let Some(s) = &args.step {
        path.push_str(&format!("?step={s}"));
    }
    let text = runtime()?.block_on(async {
        let u = url(&args.node.addr, &path);
        let resp = reqwest::get(&u)
            .await
            .with_context(|| format!("cannot reach the node at {}", args.node.addr))?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if !status.is_success() {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            bail!("{}", v["error"].as_str().unwrap_or("no such log"));
        }
        Ok(bytes)
    })?;
    use std::io::Write;
    std::io::stdout().write_all(&text)?;
    Ok(ExitCode::SUCCESS)
}

pub fn submit(args: Submit) -> anyhow::Result<ExitCode> {
    let key = files::read_key(&args.key)?;
    let req = SignedRequest::sign(
        &key,
        ApiAction::Submit {
            repo: args.repo.clone(),
            branch: args.branch.clone(),
            sha: args.sha.clone(),
        },
        Timestamp::now(),
    );
    let answer = runtime()?.block_on(async {
        let u = url(&args.node.addr, "/api/v1/submit");
        let resp = reqwest::Client::new()
            .post(&u)
            .body(req.to_bytes())
            .send()
            .await
            .with_context(|| format!("cannot reach the node at {}", args.node.addr))?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await?;
        if !status.is_success() {
            bail!("{}", body["error"].as_str().unwrap_or("refused"));
        }
        Ok(body)
    })?;
    let answer: buildmesh_node::api::Announced = serde_json::from_value(answer)?;
    if answer.announced {
        println!("announced {} {} {}", args.repo, args.branch, args.sha);
    } else {
        println!(
            "already announced: {} {} {}",
            args.repo, args.branch, args.sha
        );
    }
    Ok(ExitCode::SUCCESS)
}

// Posts a signed request to `path` and returns the JSON answer, or the node's error.
fn post_signed(node: &str, path: &str, req: &SignedRequest) -> anyhow::Result<serde_json::Value> {
    runtime()?.block_on(async {
        let u = url(node, path);
        let resp = reqwest::Client::new()
            .post(&u)
            .body(req.to_bytes())
            .send()
            .await
            .with_context(|| format!("cannot reach the node at {node}"))?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await?;
        if !status.is_success() {
            bail!("{}", body["error"].as_str().unwrap_or("refused"));
        }
        Ok(body)
    })
}

pub fn rebuild(args: Rebuild) -> anyhow::Result<ExitCode> {
    let key = files::read_key(&args.key)?;
    let req = SignedRequest::sign(
        &key,
        ApiAction::Rebuild {
            sha: args.sha.clone(),
            branch: args.branch.clone(),
            builder: if args.all { None } else { args.builder.clone() },
        },
        Timestamp::now(),
    );
    let answer = post_signed(&args.node.addr, "/api/v1/rebuild", &req)?;
    let answer: buildmesh_node::api::Rebuilt = serde_json::from_value(answer)?;
    println!(
        "rebuilding {} on {} ({} build{}):",
        &answer.sha[..answer.sha.len().min(12)],
        answer.branch,
        answer.builds.len(),
        if answer.builds.len() == 1 { "" } else { "s" }
    );
    for b in &answer.builds {
        println!("  {:<20} {}", b.build, b.builder);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn cancel(args: Cancel) -> anyhow::Result<ExitCode> {
    let key = files::read_key(&args.key)?;
    let req = SignedRequest::sign(
        &key,
        ApiAction::Cancel {
            build: args.build.clone(),
        },
        Timestamp::now(),
    );
    let answer = post_signed(&args.node.addr, "/api/v1/cancel", &req)?;
    let answer: buildmesh_node::api::Cancelled = serde_json::from_value(answer)?;
    println!(
        "cancel recorded for build {} (it was {})",
        answer.build, answer.was
    );
    if args.detach {
        return Ok(ExitCode::SUCCESS);
    }
    // Wait for the build to show it stopped: a running one once its worker has killed it.
    let job = answer
        .build
        .split_once('-')
        .map_or(answer.build.as_str(), |(j, _)| j);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut query = reqwest::Url::parse("http://node/api/v1/builds").expect("a constant URL");
    query
        .query_pairs_mut()
        .append_pair("commit", &answer.sha)
        .append_pair("builder", &answer.builder);
    let path = format!("/api/v1/builds?{}", query.query().unwrap_or_default());
    let rt = runtime()?;
    loop {
        let builds: Vec<BuildView> =
            serde_json::from_value(rt.block_on(get_json(&args.node.addr, &path))?)?;
        let now = builds
            .iter()
            .find(|b| b.id.starts_with(job))
            .map(|b| b.result);
        match now {
            Some(state) if state.is_settled() => {
                println!("build {} {state}", answer.build);
                return Ok(ExitCode::SUCCESS);
            }
            _ if std::time::Instant::now() > deadline => {
                println!(
                    "build {} has not stopped yet ({}); its worker may be unreachable",
                    answer.build,
                    now.map_or("not listed", |s| s.as_str())
                );
                return Ok(ExitCode::from(1));
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(250)),
        }
    }
}

pub fn bisect(args: Bisect) -> anyhow::Result<ExitCode> {
    use buildmesh_node::bisector::SearchView;
    let key = files::read_key(&args.key)?;
    let req = SignedRequest::sign(
        &key,
        ApiAction::Bisect {
            builder: args.builder.clone(),
            branch: args.branch.clone(),
            good: args.good.clone(),
            bad: args.bad.clone(),
        },
        Timestamp::now(),
    );
    let answer = post_signed(&args.node.addr, "/api/v1/bisect", &req)?;
    let started: buildmesh_node::api::BisectStarted = serde_json::from_value(answer)?;
    let id = started.id.to_string();
    println!(
        "search {} over {} commits on {}",
        &id[..16],
        started.commits,
        args.builder
    );
    if args.detach {
        return Ok(ExitCode::SUCCESS);
    }
    let rt = runtime()?;
    let path = format!("/api/v1/bisections/{id}");
    let short = |s: &str| s[..s.len().min(12)].to_string();
    let (mut started, mut ended) = (0, std::collections::BTreeSet::new());
    loop {
        let v: SearchView = serde_json::from_value(rt.block_on(get_json(&args.node.addr, &path))?)?;
        // Each probe once when it starts, once when it comes out.
        for p in v.probes.iter().skip(started) {
            println!("  probing {} on {}", short(&p.sha), p.worker.short());
        }
        started = v.probes.len();
        for (i, p) in v.probes.iter().enumerate() {
            if let Some(o) = p.outcome
                && ended.insert(i)
            {
                println!("  {} on {}: {o:?}", short(&p.sha), p.worker.short());
            }
        }
        if let Some(c) = &v.culprit {
            let outcomes = v
                .probes
                .iter()
                .map(|p| {
                    let o = p.outcome.map_or("none", |o| match o {
                        buildmesh_protocol::bisect::Outcome::Pass => "pass",
                        buildmesh_protocol::bisect::Outcome::Fail => "fail",
                        buildmesh_protocol::bisect::Outcome::NoVerdict => "no verdict",
                    });
                    format!("{} {o}", &p.sha[..p.sha.len().min(9)])
                })
                .collect::<Vec<_>>();
            println!("probes: {}", outcomes.join(", "));
            println!("first bad commit: {}", c.sha);
            if let Some(a) = &c.author {
                println!("author: {a}");
            }
            if let Some(subject) = &c.subject {
                println!("subject: {subject}");
            }
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

pub fn supervise(args: Supervise) -> anyhow::Result<ExitCode> {
    let confine = buildmesh_node::executor::Confinement {
        user: args.user,
        max_processes: args.max_processes,
        max_memory: args.max_memory,
    };
    Ok(buildmesh_node::executor::supervise(&args.command, &confine))
}

fn parse_user(s: &str) -> Result<(u32, u32), String> {
    let (u, g) = s.split_once(':').ok_or("expected UID:GID")?;
    Ok((
        u.parse().map_err(|_| format!("`{u}` is not a user id"))?,
        g.parse().map_err(|_| format!("`{g}` is not a group id"))?,
    ))
}
