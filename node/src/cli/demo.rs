//! `buildmesh demo`.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Keep the mesh's files (keys, configs, stores, the sample repository) in this directory.
    #[arg(long)]
    keep: Option<PathBuf>,
}

pub fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let runtime = super::mesh::runtime()?;
    let mut out = std::io::stdout();
    runtime.block_on(buildmesh_node::demo::run(args.keep.as_deref(), &mut out))?;
    Ok(ExitCode::SUCCESS)
}
