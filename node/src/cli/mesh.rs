//! Running a node and talking to running nodes: run, init-node, testnet, nodes, publish.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use buildmesh_node::NodeView;
use buildmesh_node::config::{EXAMPLE, NodeConfig};

use super::{NodeAddr, files};

#[derive(Debug, clap::Args)]
pub struct Run {
    /// The node's configuration file (`buildmesh init-node` writes an example).
    #[arg(long, short)]
    config: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct InitNode {
    /// Where to write the commented example configuration.
    #[arg(long, short, default_value = "node.toml")]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct TestnetArgs {
    /// How many nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Directory to write the mesh into (created; must not hold a testnet already).
    #[arg(long)]
    dir: PathBuf,
    /// Node i (from 1) uses API port P+10i and libp2p port P+10i+1.
    #[arg(long, default_value_t = 17700)]
    base_port: u16,
    /// Give each node its own loopback address (127.0.0.2, 127.0.0.3, …), as separate hosts
    /// have, instead of all on 127.0.0.1. Linux only.
    #[arg(long)]
    spread_ips: bool,
}

#[derive(Debug, clap::Args)]
pub struct Nodes {
    #[command(flatten)]
    node: NodeAddr,
    /// Print the API's JSON as is.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    #[command(flatten)]
    node: NodeAddr,
    /// The signed document (admission, revocation, builder configuration).
    file: PathBuf,
}

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub(super) fn url(node: &str, path: &str) -> String {
    if node.starts_with("http://") || node.starts_with("https://") {
        format!("{}{path}", node.trim_end_matches('/'))
    } else {
        format!("http://{node}{path}")
    }
}

pub fn run(args: Run) -> anyhow::Result<ExitCode> {
    let config = NodeConfig::load(&args.config)?;
    runtime()?.block_on(async move {
        let node = buildmesh_node::start(config).await?;
        eprintln!(
            "node {} ({}) running; API on http://{}",
            node.name, node.id, node.api
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            fatal = node.stopped() => match fatal {
                Some(f) => bail!("the node stopped: its {} service failed: {}", f.service, f.what),
                None => bail!("the node stopped on its own"),
            },
        }
        eprintln!("shutting down");
        node.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

pub fn init_node(args: InitNode) -> anyhow::Result<ExitCode> {
    files::write_atomic(&args.out, EXAMPLE.as_bytes(), false)?;
    eprintln!(
        "wrote {}; edit the paths and addresses, then `buildmesh run --config {}`",
        args.out.display(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn testnet(args: TestnetArgs) -> anyhow::Result<ExitCode> {
    let t = buildmesh_node::testnet::generate_with(
        &args.dir,
        args.nodes,
        args.base_port,
        args.spread_ips,
    )?;
    println!("{}", args.dir.join("testnet.json").display());
    for n in &t.nodes {
        eprintln!(
            "  {}  {}  api {}  buildmesh run --config {}",
            n.name,
            n.id,
            n.api,
            n.config.display()
        );
    }
    if let Some(first) = t.nodes.first() {
        eprintln!(
            "query a node with `--node {}`, or `export BUILDMESH_NODE={}`",
            first.api, first.api
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn get_json(node: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let u = url(node, path);
    let resp = reqwest::get(&u)
        .await
        .with_context(|| format!("cannot reach the node at {node}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp
        .json()
        .await
        .with_context(|| format!("bad answer from {u}"))?;
    if !status.is_success() {
        bail!(
            "{u}: {status}: {}",
            body["error"].as_str().unwrap_or("error")
        );
    }
    Ok(body)
}

pub fn nodes(args: Nodes) -> anyhow::Result<ExitCode> {
    let value = runtime()?.block_on(get_json(&args.node.addr, "/api/v1/nodes"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    let nodes: Vec<NodeView> = serde_json::from_value(value)?;
    println!(
        "{:<14} {:<7} {:<26} {:<28} {:>8}  ID",
        "NAME", "LIVE", "ROLES", "LABELS", "RECORDS"
    );
    for n in nodes {
        let live = if n.revoked {
            "revoked"
        } else if n.live {
            "yes"
        } else {
            "no"
        };
        let roles: Vec<String> = n.roles.iter().map(|r| r.to_string()).collect();
        let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{:<14} {:<7} {:<26} {:<28} {:>8}  {}",
            n.name,
            live,
            roles.join(","),
            labels.join(","),
            n.records,
            n.id
        );
        if n.flagged {
            println!(
                "{:<14} flagged: signed two records with one sequence number",
                ""
            );
        }
        if let Some(why) = &n.paused {
            println!("{:<14} paused: {why}", "");
        }
        if let Some(h) = &n.health {
            if h.state == "quarantined" {
                println!(
                    "{:<14} QUARANTINED (quarantine {}): {} (re-validated {}/{}); builds: {}",
                    "",
                    h.quarantines,
                    h.reason.as_deref().unwrap_or("?"),
                    h.revalidated,
                    h.revalidations_needed,
                    h.builds
                        .iter()
                        .map(|b| b.build.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            } else if h.unreproduced > 0 || h.exceptions_in_row > 0 {
                println!(
                    "{:<14} health: {} unreproduced red(s) in its window, {} exception(s) in a row",
                    "", h.unreproduced, h.exceptions_in_row
                );
            }
        }
        if n.misbehaving > 0 {
            println!(
                "{:<14} misbehaving: {} record(s) it was not entitled to, last: {}",
                "",
                n.misbehaving,
                n.misbehaviour.as_deref().unwrap_or("?")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let answer = runtime()?.block_on(async {
        let u = url(&args.node.addr, "/api/v1/publish");
        let resp = reqwest::Client::new()
            .post(&u)
            .body(bytes)
            .send()
            .await
            .with_context(|| format!("cannot reach the node at {}", args.node.addr))?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await?;
        if !status.is_success() {
            bail!(
                "{}: {}",
                args.file.display(),
                body["error"].as_str().unwrap_or("refused")
            );
        }
        Ok(body)
    })?;
    let answer: buildmesh_node::api::Published = serde_json::from_value(answer)?;
    println!(
        "published {} {} as record {} of {}",
        serde_json::to_value(answer.published)?
            .as_str()
            .unwrap_or("?"),
        args.file.display(),
        answer.record.seq,
        answer.record.author
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct NotifierArgs {
    #[command(flatten)]
    node: NodeAddr,
    /// Print the API's JSON as is.
    #[arg(long)]
    json: bool,
}

pub fn notifier(args: NotifierArgs) -> anyhow::Result<ExitCode> {
    let value = runtime()?.block_on(get_json(&args.node.addr, "/api/v1/notifier"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    let v: buildmesh_node::notifier::NotifierView = serde_json::from_value(value)?;
    match v.holder {
        Some(h) => println!(
            "holder {h}{}\nterm   {}\nlease  until {}",
            if v.holding { " (this node)" } else { "" },
            v.term,
            v.lease_expires.map_or("?".to_string(), |t| t.to_string())
        ),
        None => println!("no holder known (term {})", v.term),
    }
    println!("voters {}", v.voters.len());
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct SmtpSinkArgs {
    /// Where to accept SMTP.
    #[arg(long, default_value = "127.0.0.1:2525")]
    listen: std::net::SocketAddr,
    /// Where to serve `GET /messages` (JSON).
    #[arg(long, default_value = "127.0.0.1:8025")]
    http: std::net::SocketAddr,
}

pub fn smtp_sink(args: SmtpSinkArgs) -> anyhow::Result<ExitCode> {
    let (addr, mailbox) = buildmesh_node::smtp_sink::bind(args.listen)
        .with_context(|| format!("cannot listen for SMTP on {}", args.listen))?;
    runtime()?.block_on(async move {
        let app = axum::Router::new().route(
            "/messages",
            axum::routing::get(move || {
                let mailbox = mailbox.clone();
                async move { axum::Json(mailbox.all()) }
            }),
        );
        let listener = tokio::net::TcpListener::bind(args.http)
            .await
            .with_context(|| format!("cannot listen on {}", args.http))?;
        eprintln!(
            "SMTP sink on {addr}; messages at http://{}/messages",
            listener.local_addr()?
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            })
            .await?;
        Ok(ExitCode::SUCCESS)
    })
}
