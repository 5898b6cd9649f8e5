//! A local mesh in one directory: a maintainer key, the genesis, node keys with admissions and
//! one configuration per node on loopback ports, and `testnet.json` naming it all. The tests,
//! the demo, the deploy scripts and a new user trying the mesh start from it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use buildmesh_protocol::docs::{Admission, Genesis, Role, SignedDoc};
use buildmesh_protocol::{NodeId, SecretKey, Timestamp};
use serde::{Deserialize, Serialize};

use crate::files;

/// Why a testnet could not be written.
#[derive(Debug, thiserror::Error)]
pub enum TestnetError {
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The directory already holds a testnet.
    #[error("{0} already holds a testnet.json; choose an empty directory")]
    Exists(PathBuf),
    /// Bad parameters.
    #[error("{0}")]
    Invalid(String),
}

/// `testnet.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Testnet {
    /// The genesis file.
    pub genesis: PathBuf,
    /// The maintainer's secret key.
    pub maintainer_key: PathBuf,
    /// The nodes.
    pub nodes: Vec<TestnetNode>,
}

/// One node of a testnet.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TestnetNode {
    /// Its name.
    pub name: String,
    /// Its id.
    pub id: NodeId,
    /// Its secret key file.
    pub key: PathBuf,
    /// Its configuration file.
    pub config: PathBuf,
    /// Its HTTP API, host:port.
    pub api: String,
}

const ARCHES: [&str; 3] = ["x86_64", "aarch64", "x86_64"];
const OSES: [&str; 4] = ["linux", "linux", "freebsd", "linux"];

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TestnetError + '_ {
    move |source| TestnetError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The labels and roles node `i` (from 0) of a testnet gets: every node is a worker with
/// varied labels; node 1 also announces; nodes 1 to 3 take part in the notifier election.
pub fn roles_and_labels(i: usize) -> (BTreeSet<Role>, BTreeMap<String, String>) {
    let mut roles = BTreeSet::from([Role::Worker]);
    if i == 0 {
        roles.insert(Role::Announcer);
    }
    if i < 3 {
        roles.insert(Role::Notifier);
    }
    let labels = BTreeMap::from([
        ("os".to_string(), OSES[i % OSES.len()].to_string()),
        ("arch".to_string(), ARCHES[i % ARCHES.len()].to_string()),
    ]);
    (roles, labels)
}

/// The loopback address of node `i` (from 0): 127.0.0.1 for every node, or with `spread`
/// 127.0.0.2, 127.0.0.3, … — one address per node, as separate hosts have (Linux answers on
/// all of 127.0.0.0/8 without configuration).
pub fn node_ip(i: usize, spread: bool) -> std::net::Ipv4Addr {
    if spread {
        let n = i as u32 + 2;
        std::net::Ipv4Addr::new(127, (n >> 16) as u8, (n >> 8) as u8, n as u8)
    } else {
        std::net::Ipv4Addr::LOCALHOST
    }
}

/// Writes a testnet of `n` nodes into `dir`, all on 127.0.0.1. Node `i` (from 1) uses ports
/// `base + 10 i` (API) and `base + 10 i + 1` (TCP and QUIC); `base` 0 lets the system choose
/// every port and leaves the bootstrap lists empty (the caller fills them).
pub fn generate(dir: &Path, n: usize, base_port: u16) -> Result<Testnet, TestnetError> {
    generate_with(dir, n, base_port, false)
}

/// [`generate`], with `spread_ips` giving each node its own loopback address ([`node_ip`]).
pub fn generate_with(
    dir: &Path,
    n: usize,
    base_port: u16,
    spread_ips: bool,
) -> Result<Testnet, TestnetError> {
    if spread_ips && !cfg!(target_os = "linux") {
        return Err(TestnetError::Invalid(
            "--spread-ips needs Linux, which answers on all of 127.0.0.0/8".into(),
        ));
    }
    if n == 0 {
        return Err(TestnetError::Invalid(
            "a testnet needs at least one node".into(),
        ));
    }
    if base_port != 0 && base_port as usize + 10 * n + 1 > u16::MAX as usize {
        return Err(TestnetError::Invalid(format!(
            "base port {base_port} leaves no room for {n} nodes"
        )));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let dir = dir.canonicalize().map_err(io(dir))?;
    let manifest = dir.join("testnet.json");
    if manifest.exists() {
        return Err(TestnetError::Exists(dir));
    }
    let maintainer = SecretKey::generate().map_err(|e| TestnetError::Invalid(e.to_string()))?;
    let maintainer_key = dir.join("maintainer.key");
    files::write_new_key(&maintainer_key, &maintainer).map_err(io(&maintainer_key))?;
    let genesis = Genesis {
        name: dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "testnet".into()),
        maintainers: vec![maintainer.id()],
        threshold: 1,
        created: Timestamp::now(),
    };
    let mut gdoc = SignedDoc::new(&genesis).expect("a genesis encodes");
    gdoc.sign(&maintainer);
    let mesh = gdoc.id();
    let genesis_path = dir.join("genesis.bm");
    files::write_atomic(&genesis_path, &gdoc.to_bytes()).map_err(io(&genesis_path))?;

    let keys: Vec<SecretKey> = (0..n)
        .map(|_| SecretKey::generate().map_err(|e| TestnetError::Invalid(e.to_string())))
        .collect::<Result<_, _>>()?;
    let port = |i: usize, off: usize| {
        if base_port == 0 {
            0
        } else {
            base_port as usize + 10 * (i + 1) + off
        }
    };
    let mut nodes = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let name = format!("node-{}", i + 1);
        let ndir = dir.join(&name);
        std::fs::create_dir_all(&ndir).map_err(io(&ndir))?;
        let key_path = ndir.join("node.key");
        files::write_new_key(&key_path, key).map_err(io(&key_path))?;
        let (roles, labels) = roles_and_labels(i);
        let admission = Admission {
            mesh,
            node: key.id(),
            name: name.clone(),
            roles,
            labels,
            owner: Some(format!("{name}-owner@localhost")),
            issued: Timestamp::now(),
            expires: None,
        };
        let mut adoc = SignedDoc::new(&admission).expect("an admission encodes");
        adoc.sign(&maintainer);
        let adm_path = ndir.join("node.adm");
        files::write_atomic(&adm_path, &adoc.to_bytes()).map_err(io(&adm_path))?;
        let bootstrap: Vec<String> = if base_port == 0 {
            Vec::new()
        } else {
            keys.iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(j, k)| {
                    format!(
                        "\"/ip4/{}/tcp/{}/p2p/{}\"",
                        node_ip(j, spread_ips),
                        port(j, 1),
                        k.id()
                    )
                })
                .collect()
        };
        let ip = node_ip(i, spread_ips);
        let api = format!("{ip}:{}", port(i, 0));
        let config = format!(
            "# {name} of a local testnet (buildmesh testnet). Paths are relative to this file.\n\
             key = \"node.key\"\n\
             genesis = \"../genesis.bm\"\n\
             admission = \"node.adm\"\n\
             data_dir = \"data\"\n\
             listen = [\"/ip4/{ip}/tcp/{p}\", \"/ip4/{ip}/udp/{p}/quic-v1\"]\n\
             bootstrap = [{bootstrap}]\n\
             api = \"{api}\"\n\
             \n\
             [worker]\n\
             # Many nodes share this machine's disk: a low floor, so that a test's nodes build.\n\
             min_free_disk = \"64MiB\"\n",
            p = port(i, 1),
            bootstrap = bootstrap.join(", "),
        );
        let config_path = ndir.join("node.toml");
        files::write_atomic(&config_path, config.as_bytes()).map_err(io(&config_path))?;
        nodes.push(TestnetNode {
            name,
            id: key.id(),
            key: key_path,
            config: config_path,
            api,
        });
    }
    let testnet = Testnet {
        genesis: genesis_path,
        maintainer_key,
        nodes,
    };
    let json = serde_json::to_vec_pretty(&testnet).expect("a testnet manifest encodes");
    files::write_atomic(&manifest, &json).map_err(io(&manifest))?;
    Ok(testnet)
}
