//! Documents: genesis, sign, admit, revoke, config sign, verify, inspect.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use buildmesh_protocol::builders::BuilderConfig;
use buildmesh_protocol::docs::{
    Admission, Doc, DocKind, Genesis, Release, Revocation, RevocationReason, Role, SignedDoc,
};
use buildmesh_protocol::record::Record;
use buildmesh_protocol::trust::Trust;
use buildmesh_protocol::{NodeId, SecretKey, Timestamp};
use serde_json::json;

use super::{Out, files};

#[derive(Debug, clap::Args)]
pub struct GenesisArgs {
    /// The mesh's name.
    #[arg(long)]
    name: String,
    /// A maintainer's node id (repeat for each maintainer).
    #[arg(long = "maintainer", required = true, value_name = "ID")]
    maintainers: Vec<NodeId>,
    /// How many maintainers must sign admissions, revocations and configurations.
    #[arg(long, default_value_t = 1)]
    threshold: u32,
    #[command(flatten)]
    out: Out,
}

#[derive(Debug, clap::Args)]
pub struct Sign {
    /// The signer's secret key.
    #[arg(long, short)]
    key: PathBuf,
    /// The document to sign in place.
    doc: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct Admit {
    /// The mesh's genesis.
    #[arg(long)]
    genesis: PathBuf,
    /// The maintainer's secret key.
    #[arg(long, short)]
    key: PathBuf,
    /// The admitted node's id.
    #[arg(long)]
    node: NodeId,
    /// Its name.
    #[arg(long)]
    name: String,
    /// A role: worker, announcer or notifier (repeat for several).
    #[arg(long = "role", required = true)]
    roles: Vec<Role>,
    /// A label KEY=VALUE, e.g. os=linux (repeat for several).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Who to mail when the node goes missing.
    #[arg(long)]
    owner: Option<String>,
    /// When the admission ends (RFC 3339, e.g. 2027-06-30T00:00:00Z).
    #[arg(long)]
    expires: Option<Timestamp>,
    #[command(flatten)]
    out: Out,
}

#[derive(Debug, clap::Args)]
pub struct Revoke {
    /// The mesh's genesis.
    #[arg(long)]
    genesis: PathBuf,
    /// The maintainer's secret key.
    #[arg(long, short)]
    key: PathBuf,
    /// The revoked key's id.
    #[arg(long)]
    subject: NodeId,
    /// compromised (hide all its results), retired or lost (earlier results stand).
    #[arg(long)]
    reason: RevocationReason,
    /// From when its records are refused (RFC 3339; default now).
    #[arg(long)]
    effective: Option<Timestamp>,
    #[command(flatten)]
    out: Out,
}

#[derive(Debug, clap::Args)]
pub struct ReleaseArgs {
    /// The mesh's genesis.
    #[arg(long)]
    genesis: PathBuf,
    /// The maintainer's secret key.
    #[arg(long, short)]
    key: PathBuf,
    /// The quarantined worker's id.
    #[arg(long)]
    subject: NodeId,
    /// Which of its quarantines ends (`quarantines` in `buildmesh nodes --json`, or the
    /// number `buildmesh nodes` prints).
    #[arg(long)]
    episode: u32,
    #[command(flatten)]
    out: Out,
}

#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Check a builders TOML file and write it as a signed document.
    Sign(ConfigSign),
    /// Check a builders TOML file without signing it.
    Check(ConfigCheck),
}

#[derive(Debug, clap::Args)]
pub struct ConfigSign {
    /// The mesh's genesis.
    #[arg(long)]
    genesis: PathBuf,
    /// The maintainer's secret key.
    #[arg(long, short)]
    key: PathBuf,
    /// The builders TOML file.
    toml: PathBuf,
    #[command(flatten)]
    out: Out,
}

#[derive(Debug, clap::Args)]
pub struct ConfigCheck {
    /// The builders TOML file.
    toml: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct Verify {
    /// The mesh's genesis.
    #[arg(long)]
    genesis: PathBuf,
    /// Documents to check; revocations among them apply to the others.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct Inspect {
    /// A document, record or key file.
    file: PathBuf,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

fn require_maintainer(trust: &Trust, key: &SecretKey) -> anyhow::Result<()> {
    if !trust.is_maintainer(&key.id(), Timestamp::now()) {
        bail!(
            "{} is not a maintainer of mesh `{}`",
            key.id(),
            trust.genesis().name
        );
    }
    Ok(())
}

// A document rides in a record of the node that publishes it: one larger than a record can
// carry is refused here, when it is written, rather than by every node after it is published.
// (The envelope and the publishing node's signature take a few hundred bytes.)
const MAX_DOC_BYTES: usize = buildmesh_protocol::record::MAX_RECORD_BYTES - 4096;

fn check_doc_size(doc: &SignedDoc) -> anyhow::Result<()> {
    let len = doc.to_bytes().len();
    if len > MAX_DOC_BYTES {
        bail!(
            "the {} document is {len} bytes; a record carries at most {MAX_DOC_BYTES} bytes of document",
            doc.kind
        );
    }
    Ok(())
}

fn write_doc(out: &Out, doc: &SignedDoc) -> anyhow::Result<()> {
    check_doc_size(doc)?;
    files::write_atomic(&out.out, &doc.to_bytes(), out.force)
}

pub fn genesis(args: GenesisArgs) -> anyhow::Result<ExitCode> {
    let g = Genesis {
        name: args.name,
        maintainers: args.maintainers,
        threshold: args.threshold,
        created: Timestamp::now(),
    };
    if g.threshold == 0 || g.threshold as usize > g.maintainers.len() {
        bail!(
            "--threshold {} must be between 1 and the {} maintainer(s) named",
            g.threshold,
            g.maintainers.len()
        );
    }
    let doc = SignedDoc::new(&g)?;
    write_doc(&args.out, &doc)?;
    eprintln!(
        "wrote an unsigned genesis to {}; {} maintainer(s) must now run `buildmesh sign --key KEY {}`",
        args.out.out.display(),
        g.threshold,
        args.out.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn sign(args: Sign) -> anyhow::Result<ExitCode> {
    let key = files::read_key(&args.key)?;
    let mut doc = files::read_doc(&args.doc)?;
    doc.verify_signatures()
        .with_context(|| format!("{} already carries a bad signature", args.doc.display()))?;
    if doc.kind == DocKind::Genesis {
        let g: Genesis = doc.body()?;
        if !g.maintainers.contains(&key.id()) {
            bail!("{} is not one of this genesis's maintainers", key.id());
        }
    }
    doc.sign(&key);
    check_doc_size(&doc)?;
    files::write_atomic(&args.doc, &doc.to_bytes(), true)?;
    eprintln!(
        "signed {} {} by {} ({} signature(s))",
        doc.kind,
        args.doc.display(),
        key.id(),
        doc.signatures.len()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn admit(args: Admit) -> anyhow::Result<ExitCode> {
    let g = files::read_genesis(&args.genesis)?;
    let trust = Trust::new(g.clone());
    let key = files::read_key(&args.key)?;
    require_maintainer(&trust, &key)?;
    let now = Timestamp::now();
    if let Some(e) = args.expires
        && e <= now
    {
        bail!("--expires {e} is in the past");
    }
    let labels: BTreeMap<String, String> = args.labels.into_iter().collect();
    let a = Admission {
        mesh: g.mesh,
        node: args.node,
        name: args.name,
        roles: args.roles.into_iter().collect::<BTreeSet<_>>(),
        labels,
        owner: args.owner,
        issued: now,
        expires: args.expires,
    };
    let mut doc = SignedDoc::new(&a)?;
    doc.sign(&key);
    write_doc(&args.out, &doc)?;
    eprintln!("admitted {} ({}) to `{}`", a.name, a.node, g.genesis.name);
    Ok(ExitCode::SUCCESS)
}

pub fn revoke(args: Revoke) -> anyhow::Result<ExitCode> {
    let g = files::read_genesis(&args.genesis)?;
    let trust = Trust::new(g.clone());
    let key = files::read_key(&args.key)?;
    require_maintainer(&trust, &key)?;
    let now = Timestamp::now();
    let r = Revocation {
        mesh: g.mesh,
        subject: args.subject,
        reason: args.reason,
        effective: args.effective.unwrap_or(now),
        issued: now,
    };
    let mut doc = SignedDoc::new(&r)?;
    doc.sign(&key);
    write_doc(&args.out, &doc)?;
    eprintln!(
        "revoked {} ({}) effective {}",
        r.subject, r.reason, r.effective
    );
    Ok(ExitCode::SUCCESS)
}

pub fn release(args: ReleaseArgs) -> anyhow::Result<ExitCode> {
    let g = files::read_genesis(&args.genesis)?;
    let trust = Trust::new(g.clone());
    let key = files::read_key(&args.key)?;
    require_maintainer(&trust, &key)?;
    let r = Release {
        mesh: g.mesh,
        subject: args.subject,
        episode: args.episode,
        issued: Timestamp::now(),
    };
    let mut doc = SignedDoc::new(&r)?;
    doc.sign(&key);
    write_doc(&args.out, &doc)?;
    eprintln!(
        "released {} from quarantine {}; publish it through any node (buildmesh publish)",
        r.subject, r.episode
    );
    Ok(ExitCode::SUCCESS)
}

// The file's configuration, and whether its version was stamped from the present time (the
// file leaves `version` out).
fn read_builders(
    path: &Path,
    mesh: buildmesh_protocol::Hash,
) -> anyhow::Result<(BuilderConfig, bool)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    BuilderConfig::from_toml_at(mesh, &text, Timestamp::now())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

// How a version reads in what `config check` and `config sign` print.
fn version_note(c: &BuilderConfig, stamped: bool) -> String {
    if stamped {
        format!(
            "version {} (stamped: the file has no `version`, so the signing time in milliseconds, which orders after every earlier one)",
            c.version
        )
    } else {
        format!("version {}", c.version)
    }
}

pub fn config(cmd: ConfigCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCommand::Check(args) => {
            let (c, stamped) = read_builders(&args.toml, buildmesh_protocol::Hash::ZERO)?;
            println!(
                "{}: {}, {} builder(s): {}",
                args.toml.display(),
                version_note(&c, stamped),
                c.builders.len(),
                c.builders
                    .iter()
                    .map(|b| {
                        let id = buildmesh_protocol::builders::safe_id(&b.name);
                        if id == b.name {
                            b.name.clone()
                        } else {
                            format!("{} (id {id})", b.name)
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        ConfigCommand::Sign(args) => {
            let g = files::read_genesis(&args.genesis)?;
            let trust = Trust::new(g.clone());
            let key = files::read_key(&args.key)?;
            require_maintainer(&trust, &key)?;
            let (c, stamped) = read_builders(&args.toml, g.mesh)?;
            let mut doc = SignedDoc::new(&c)?;
            doc.sign(&key);
            write_doc(&args.out, &doc)?;
            eprintln!(
                "signed builder configuration {} ({} builders)",
                version_note(&c, stamped),
                c.builders.len()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn verify(args: Verify) -> anyhow::Result<ExitCode> {
    let g = match files::read_genesis(&args.genesis) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("{}: INVALID: {e:#}", args.genesis.display());
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut trust = Trust::new(g.clone());
    let mut docs = Vec::new();
    let mut failed = false;
    for path in &args.files {
        match files::read_doc(path) {
            Ok(d) => docs.push((path, d)),
            Err(e) => {
                eprintln!("{}: INVALID: {e:#}", path.display());
                failed = true;
            }
        }
    }
    // Revocations first, so that they count against the admissions given beside them.
    for (path, doc) in docs.iter().filter(|(_, d)| d.kind == DocKind::Revocation) {
        if let Err(e) = trust.apply(doc) {
            eprintln!("{}: INVALID: {e}", path.display());
            failed = true;
        } else {
            let r: Revocation = doc.body()?;
            println!(
                "{}: ok: revocation of {} ({}) effective {}",
                path.display(),
                r.subject,
                r.reason,
                r.effective
            );
        }
    }
    let now = Timestamp::now();
    for (path, doc) in docs.iter().filter(|(_, d)| d.kind != DocKind::Revocation) {
        let outcome: anyhow::Result<String> = match doc.kind {
            DocKind::Genesis => Genesis::verify(doc).map_err(Into::into).and_then(|v| {
                if v.mesh == g.mesh {
                    Ok(format!("genesis of `{}`", v.genesis.name))
                } else {
                    Err(anyhow::anyhow!(
                        "a different genesis ({}) than {}",
                        v.mesh,
                        args.genesis.display()
                    ))
                }
            }),
            DocKind::Admission => trust
                .check_admission(doc)
                .map_err(Into::into)
                .and_then(|a| {
                    let mut t = trust.clone();
                    t.apply(doc)?;
                    t.check_member(&a.node, now)?;
                    Ok(format!(
                        "admission of {} ({}) as {}",
                        a.name,
                        a.node,
                        a.roles
                            .iter()
                            .map(|r| r.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                }),
            DocKind::BuilderConfig => trust
                .check_config(doc)
                .map(|c| format!("builder configuration version {}", c.version))
                .map_err(Into::into),
            DocKind::Release => trust
                .check_release(doc)
                .map(|r| format!("release of {} from quarantine {}", r.subject, r.episode))
                .map_err(Into::into),
            DocKind::Revocation => unreachable!("handled above"),
        };
        match outcome {
            Ok(what) => println!("{}: ok: {what}", path.display()),
            Err(e) => {
                eprintln!("{}: INVALID: {e:#}", path.display());
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub fn inspect(args: Inspect) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let value = if let Ok(doc) = SignedDoc::from_bytes(&bytes) {
        let body: Doc = doc.parse()?;
        let signatures: Vec<_> = doc
            .signatures
            .iter()
            .map(|s| {
                let valid = s.key.verify(doc.kind.domain(), &doc.body, &s.sig).is_ok();
                json!({"key": s.key, "sig": s.sig, "valid": valid})
            })
            .collect();
        let body = serde_json::to_value(&body)?;
        json!({
            "type": "document",
            "kind": doc.kind,
            "id": doc.id(),
            "body": body["body"],
            "signatures": signatures,
        })
    } else if let Ok(rec) = Record::verify(&bytes) {
        let body = serde_json::to_value(rec.body()?)?;
        let e = &rec.envelope;
        json!({
            "type": "record",
            "author": e.author,
            "seq": e.seq,
            "prev": e.prev,
            "kind": e.kind,
            "time": e.time,
            "hash": rec.hash,
            "body": body["body"],
        })
    } else if let Ok(key) = SecretKey::from_file_text(&String::from_utf8_lossy(&bytes)) {
        json!({"type": "secret-key", "id": key.id()})
    } else {
        bail!(
            "{} is not a buildmesh document, record or key (or its signature is bad)",
            args.file.display()
        );
    };
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(ExitCode::SUCCESS)
}
