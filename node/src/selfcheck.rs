//! A worker's checks of itself before it claims: free disk in its work directory above a floor,
//! and an optional check command that must exit 0. A failing check stops claiming and says why
//! in the heartbeat (`paused`); claiming resumes by itself once the checks pass again.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The free-disk floor of the work directory (`[worker] min_free_disk`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DiskFloor {
    /// The smaller of 4 GiB and 10 % of the file system (the default).
    Default,
    /// At least this many bytes free (`"4GiB"`, `"500MB"`; `"0"` turns the check off).
    Bytes(u64),
    /// At least this share of the file system free (`"10%"`).
    Percent(f64),
}

const GIB: u64 = 1 << 30;

impl std::str::FromStr for DiskFloor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            let p: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("`{s}` is not a percentage such as \"10%\""))?;
            if !(0.0..=100.0).contains(&p) {
                return Err(format!("`{s}` is not between 0% and 100%"));
            }
            return Ok(DiskFloor::Percent(p));
        }
        let split = t
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len());
        let (n, unit) = t.split_at(split);
        let n: f64 = n.parse().map_err(|_| {
            format!("`{s}` is not a size such as \"4GiB\" or a share such as \"10%\"")
        })?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "K" | "KB" => 1_000,
            "KiB" => 1 << 10,
            "M" | "MB" => 1_000_000,
            "MiB" => 1 << 20,
            "G" | "GB" => 1_000_000_000,
            "GiB" => GIB,
            "T" | "TB" => 1_000_000_000_000,
            "TiB" => 1 << 40,
            other => {
                return Err(format!(
                    "unknown unit `{other}` in `{s}` (B, MB, MiB, GB, GiB, …)"
                ));
            }
        };
        Ok(DiskFloor::Bytes((n * mult as f64) as u64))
    }
}

impl DiskFloor {
    /// The bytes that must be free on a file system of `total` bytes.
    pub fn bytes(self, total: u64) -> u64 {
        match self {
            DiskFloor::Default => (4 * GIB).min(total / 10),
            DiskFloor::Bytes(b) => b,
            DiskFloor::Percent(p) => (total as f64 * p / 100.0) as u64,
        }
    }
}

/// The checks of one worker.
#[derive(Clone, Debug)]
pub struct SelfCheck {
    /// The work directory (clones, workspaces, logs).
    pub work_dir: PathBuf,
    /// Its free-disk floor.
    pub floor: DiskFloor,
    /// A command run with `sh -c` in the work directory; anything but exit 0 fails the check.
    pub command: Option<String>,
}

/// How long the check command may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

fn human(bytes: u64) -> String {
    if bytes >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else {
        format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

// (free, total) bytes of the file system holding `dir`, or of its nearest existing parent.
fn disk_space(dir: &Path) -> std::io::Result<(u64, u64)> {
    let mut at = dir;
    while !at.exists() {
        match at.parent() {
            Some(p) => at = p,
            None => break,
        }
    }
    let s = nix::sys::statvfs::statvfs(at).map_err(std::io::Error::from)?;
    let unit = s.fragment_size() as u64;
    Ok((s.blocks_available() as u64 * unit, s.blocks() as u64 * unit))
}

impl SelfCheck {
    /// Runs the checks: `None` when the worker may claim, else why not.
    pub async fn run(&self) -> Option<String> {
        let dir = self.work_dir.clone();
        let floor = self.floor;
        let disk = tokio::task::spawn_blocking(move || disk_space(&dir)).await;
        match disk {
            Ok(Ok((free, total))) => {
                let need = floor.bytes(total);
                if need > 0 && free < need {
                    return Some(format!(
                        "low disk: {} free in {}, needs {} (worker.min_free_disk)",
                        human(free),
                        self.work_dir.display(),
                        human(need)
                    ));
                }
            }
            Ok(Err(e)) => {
                return Some(format!(
                    "cannot read free disk of {}: {e}",
                    self.work_dir.display()
                ));
            }
            Err(_) => return Some("disk check did not finish".into()),
        }
        let cmd = self.command.as_deref()?;
        let _ = std::fs::create_dir_all(&self.work_dir);
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(&self.work_dir)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(COMMAND_TIMEOUT, child).await {
            Err(_) => Some(format!(
                "check command `{cmd}` ran past {}s",
                COMMAND_TIMEOUT.as_secs()
            )),
            Ok(Err(e)) => Some(format!("check command `{cmd}` did not start: {e}")),
            Ok(Ok(out)) if out.status.success() => None,
            Ok(Ok(out)) => {
                let text = String::from_utf8_lossy(if out.stderr.is_empty() {
                    &out.stdout
                } else {
                    &out.stderr
                })
                .into_owned();
                let last: String = text
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .chars()
                    .take(200)
                    .collect();
                Some(format!(
                    "check command `{cmd}` failed ({}){}",
                    out.status,
                    if last.is_empty() {
                        String::new()
                    } else {
                        format!(": {last}")
                    }
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_parse_and_the_default_is_the_smaller_of_4_gib_and_a_tenth() {
        assert_eq!("4GiB".parse(), Ok(DiskFloor::Bytes(4 * GIB)));
        assert_eq!("500 MB".parse(), Ok(DiskFloor::Bytes(500_000_000)));
        assert_eq!("10%".parse(), Ok(DiskFloor::Percent(10.0)));
        assert_eq!("0".parse(), Ok(DiskFloor::Bytes(0)));
        assert!(
            "4 parsecs"
                .parse::<DiskFloor>()
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!("120%".parse::<DiskFloor>().is_err());
        assert_eq!(DiskFloor::Default.bytes(100 * GIB), 4 * GIB);
        assert_eq!(DiskFloor::Default.bytes(10 * GIB), GIB);
    }

    #[tokio::test]
    async fn a_floor_above_the_disk_or_a_failing_command_pauses_and_a_passing_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = SelfCheck {
            work_dir: dir.path().join("work"),
            floor: DiskFloor::Bytes(0),
            command: Some("test -e ok || { echo 'no ok file' >&2; exit 3; }".into()),
        };
        let why = c.run().await.expect("the command fails");
        assert!(why.contains("no ok file") && why.contains("3"), "{why}");
        std::fs::write(dir.path().join("work/ok"), "").unwrap();
        assert_eq!(c.run().await, None);
        c.floor = DiskFloor::Percent(100.0);
        let why = c.run().await.expect("no disk is entirely free");
        assert!(why.starts_with("low disk"), "{why}");
    }
}
