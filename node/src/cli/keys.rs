//! `buildmesh keygen` and `buildmesh id`.

use std::path::PathBuf;
use std::process::ExitCode;

use buildmesh_protocol::SecretKey;

use super::files;

#[derive(Debug, clap::Args)]
pub struct Keygen {
    /// Where to write the secret key (must not exist).
    #[arg(long, short)]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct Id {
    /// The secret key file.
    #[arg(long, short)]
    key: PathBuf,
}

pub fn keygen(args: Keygen) -> anyhow::Result<ExitCode> {
    let key = SecretKey::generate()?;
    files::write_new_key(&args.out, &key)?;
    println!("{}", key.id());
    Ok(ExitCode::SUCCESS)
}

pub fn id(args: Id) -> anyhow::Result<ExitCode> {
    let key = files::read_key(&args.key)?;
    println!("{}", key.id());
    Ok(ExitCode::SUCCESS)
}
