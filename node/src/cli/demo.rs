//! `buildmesh demo`.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Keep the mesh's files (keys, configs, stores, the sample repository) in this directory.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// After the demo, keep the mesh running and its web console open until Ctrl-C.
    #[arg(long)]
    serve: bool,
}

pub fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let runtime = super::mesh::runtime()?;
    let mut out = std::io::stdout();
    runtime.block_on(buildmesh_node::demo::run(
        args.keep.as_deref(),
        args.serve,
        &mut out,
    ))?;
    Ok(ExitCode::SUCCESS)
}
