//! Real `buildmesh` processes for the tests that run them: started on a config file, killed
//! (SIGKILL) when dropped, and the JSON API read without failing the test on a node still
//! starting.

use std::process::{Child, Command, Stdio};

/// A running `buildmesh run`; killed and reaped when dropped.
#[derive(Debug)]
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `buildmesh run --config CONFIG` with its output discarded.
pub fn run(config: &std::path::Path) -> Proc {
    Proc(
        Command::new(crate::binary())
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("buildmesh runs"),
    )
}

/// Starts `buildmesh run --config CONFIG` with its log in `log`: warnings, and when it stored
/// each record (author, seq and kind, at `buildmesh::stored=trace`), which the benchmarks read
/// to time records across processes.
pub fn run_logging_stores(config: &std::path::Path, log: &std::path::Path) -> Proc {
    Proc(
        Command::new(crate::binary())
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn,buildmesh::stored=trace")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .expect("buildmesh runs"),
    )
}

/// GET `url` as JSON; `None` while the node does not answer or answers something else.
pub async fn json(url: String) -> Option<serde_json::Value> {
    reqwest::get(url).await.ok()?.json().await.ok()
}
