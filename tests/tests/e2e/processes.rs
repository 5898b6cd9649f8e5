//! Real `buildmesh` processes: killed with SIGKILL and restarted on the same directory.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use buildmesh_tests::{binary, free_port_base, wait_for};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(config: &std::path::Path) -> Proc {
    Proc(
        Command::new(binary())
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("buildmesh runs"),
    )
}

async fn vv_of(api: &str, id: &str) -> Option<u64> {
    let v: serde_json::Value = reqwest::get(format!("http://{api}/api/v1/vv"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some(v.get(id).and_then(|x| x.as_u64()).unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_no_record_it_had_flushed() {
    buildmesh_tests::logs();
    let dir = tempfile::tempdir().unwrap();
    let base = free_port_base(2);
    let t = buildmesh_node::testnet::generate(&dir.path().join("mesh"), 2, base).unwrap();
    let n0 = &t.nodes[0];
    let id = n0.id.to_string();
    let mut p0 = run(&n0.config);
    let _p1 = run(&t.nodes[1].config);
    wait_for(
        "node 1 to publish its admission",
        Duration::from_secs(60),
        || async { vv_of(&n0.api, &id).await.unwrap_or(0) >= 1 },
    )
    .await;
    // Acknowledged writes: each publish answers after the record is flushed.
    let maintainer = buildmesh_protocol::SecretKey::from_file_text(
        &std::fs::read_to_string(&t.maintainer_key).unwrap(),
    )
    .unwrap();
    let genesis = buildmesh_protocol::docs::Genesis::verify(
        &buildmesh_protocol::docs::SignedDoc::from_bytes(&std::fs::read(&t.genesis).unwrap())
            .unwrap(),
    )
    .unwrap();
    let client = reqwest::Client::new();
    let mut acked = 0;
    for k in 0..20u8 {
        let key = buildmesh_protocol::SecretKey::from_seed([100 + k; 32]);
        let a = buildmesh_protocol::docs::Admission {
            mesh: genesis.mesh,
            node: key.id(),
            name: format!("spare-{k}"),
            roles: [buildmesh_protocol::docs::Role::Worker].into(),
            labels: Default::default(),
            owner: None,
            issued: buildmesh_protocol::Timestamp::now(),
            expires: None,
        };
        let mut doc = buildmesh_protocol::docs::SignedDoc::new(&a).unwrap();
        doc.sign(&maintainer);
        let resp = client
            .post(format!("http://{}/api/v1/publish", n0.api))
            .body(doc.to_bytes())
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
        let v: serde_json::Value = resp.json().await.unwrap();
        acked = v["record"]["seq"].as_u64().unwrap();
    }
    // Pull the plug.
    p0.0.kill().unwrap();
    p0.0.wait().unwrap();
    let _p0 = run(&n0.config);
    wait_for("node 1 back", Duration::from_secs(60), || async {
        vv_of(&n0.api, &id).await.is_some()
    })
    .await;
    let held = vv_of(&n0.api, &id).await.unwrap();
    assert!(
        held >= acked,
        "node 1 holds {held} of its own records after the kill, acknowledged {acked}"
    );
    // And it carries on from there without a fork.
    let nodes: serde_json::Value = reqwest::get(format!("http://{}/api/v1/nodes", n0.api))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        nodes
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["flagged"] == false),
        "{nodes}"
    );
}
