//! The command line: one file per group of commands.
//!
//! - `keys`: keygen, id.
//! - `docs`: genesis, sign, admit, revoke, config sign, verify, inspect.
//! - `mesh`: run, init-node, testnet, nodes, publish.
//! - `builds`: status, builds, log, submit, rebuild, cancel, bisect, supervise.
//! - `demo`: the one-command demonstration.

mod builds;
mod demo;
mod docs;
mod files;
mod keys;
mod mesh;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// buildmesh: continuous integration without a master.
///
/// Worker hosts form a peer-to-peer mesh, gossip commits, claim build jobs among themselves,
/// sign their results and replicate them into every node's store.
#[derive(Debug, Parser)]
#[command(name = "buildmesh", version, propagate_version = true)]
pub struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a new secret key (mode 0600) and print its node id.
    Keygen(keys::Keygen),
    /// Print the node id of a secret key.
    Id(keys::Id),
    /// Write an unsigned genesis document naming the mesh and its maintainers.
    Genesis(docs::GenesisArgs),
    /// Add a signature to a document, in place.
    Sign(docs::Sign),
    /// Write an admission for a node, signed by a maintainer.
    Admit(docs::Admit),
    /// Write a revocation of a key, signed by a maintainer.
    Revoke(docs::Revoke),
    /// Release a quarantined worker (a signed document, published like a revocation).
    Release(docs::ReleaseArgs),
    /// Builder configuration documents.
    #[command(subcommand)]
    Config(docs::ConfigCommand),
    /// Check documents against a genesis; exit 1 naming the first bad file and why.
    Verify(docs::Verify),
    /// Print any document or record as JSON.
    Inspect(docs::Inspect),
    /// Run a node.
    Run(mesh::Run),
    /// Write a commented example node configuration.
    InitNode(mesh::InitNode),
    /// Write everything a local mesh of N nodes needs into a directory.
    Testnet(mesh::TestnetArgs),
    /// List every admitted node as a running node sees it.
    Nodes(mesh::Nodes),
    /// Hand a maintainer-signed document to a node, which publishes it to the mesh.
    Publish(mesh::PublishArgs),
    /// The latest result per builder and branch, as a node sees it.
    Status(builds::Status),
    /// Builds of a commit or a builder.
    Builds(builds::Builds),
    /// A build's log, fetched from whichever node holds it.
    Log(builds::Log),
    /// Announce a commit, signed with your key (announcer role or maintainer).
    Submit(builds::Submit),
    /// Build a commit again on one builder (or all of its builders), signed with your key.
    Rebuild(builds::Rebuild),
    /// Stop a pending or running build, signed with your key.
    Cancel(builds::Cancel),
    /// Find the first bad commit between a good and a bad one, building commits of the range
    /// on idle workers, several at once.
    Bisect(builds::Bisect),
    /// The notifier holder, term and lease, as a node sees them.
    Notifier(mesh::NotifierArgs),
    /// Run a small SMTP server that keeps every message (for test meshes).
    SmtpSink(mesh::SmtpSinkArgs),
    /// A throwaway three-node mesh that builds a sample repository and mails a red transition.
    Demo(demo::DemoArgs),
    /// Run a build step so that it dies with the node (used by the executor).
    #[command(hide = true)]
    Supervise(builds::Supervise),
}

/// Runs one command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Keygen(a) => keys::keygen(a),
        Command::Id(a) => keys::id(a),
        Command::Genesis(a) => docs::genesis(a),
        Command::Sign(a) => docs::sign(a),
        Command::Admit(a) => docs::admit(a),
        Command::Revoke(a) => docs::revoke(a),
        Command::Release(a) => docs::release(a),
        Command::Config(c) => docs::config(c),
        Command::Verify(a) => docs::verify(a),
        Command::Inspect(a) => docs::inspect(a),
        Command::Run(a) => mesh::run(a),
        Command::InitNode(a) => mesh::init_node(a),
        Command::Testnet(a) => mesh::testnet(a),
        Command::Nodes(a) => mesh::nodes(a),
        Command::Publish(a) => mesh::publish(a),
        Command::Status(a) => builds::status(a),
        Command::Builds(a) => builds::builds(a),
        Command::Log(a) => builds::log(a),
        Command::Submit(a) => builds::submit(a),
        Command::Rebuild(a) => builds::rebuild(a),
        Command::Cancel(a) => builds::cancel(a),
        Command::Bisect(a) => builds::bisect(a),
        Command::Supervise(a) => builds::supervise(a),
        Command::Notifier(a) => mesh::notifier(a),
        Command::SmtpSink(a) => mesh::smtp_sink(a),
        Command::Demo(a) => demo::demo(a),
    }
}

/// Logs go to stderr; quiet (warnings) unless asked.
pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info,buildmesh=info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// Which node's API a command talks to.
#[derive(Debug, clap::Args)]
struct NodeAddr {
    /// A node's API address, host:port.
    #[arg(
        long = "node",
        short = 'n',
        env = "BUILDMESH_NODE",
        default_value = "127.0.0.1:7700"
    )]
    addr: String,
}

/// Where an output goes, and whether it may replace a file.
#[derive(Debug, clap::Args)]
struct Out {
    /// File to write.
    #[arg(long, short)]
    out: PathBuf,
    /// Replace the file if it exists.
    #[arg(long)]
    force: bool,
}
