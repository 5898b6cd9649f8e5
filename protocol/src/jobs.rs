//! Jobs from commits: which builders build an announced commit, and when its jobs may first be
//! claimed. Pure: the claimer and the simulator call the same code.

use std::time::Duration;

use crate::builders::BuilderConfig;
use crate::claims::JobSpec;
use crate::record::{Bisect, JobKey, Purpose, Rebuild};
use crate::time::Timestamp;

/// An announcement older than this when a node first learns it is old news: a node back from a
/// partition, or a restart.
pub const OLD_NEWS: Duration = Duration::from_secs(5);

/// How long old news waits before it may be claimed: the claims and results that other nodes
/// hold for it may be a sync round behind the announcement (two anti-entropy rounds in tests,
/// a bit less than one in the default configuration; the sync on reconnect comes first anyway).
pub const OLD_NEWS_WAIT: Duration = Duration::from_secs(2);

/// One job per builder of `config` whose repository is `repo` and whose branch patterns match
/// `branch`, for the commit `sha` first announced at `announced` (its order among the branch's
/// commits).
pub fn derive(
    config: &BuilderConfig,
    repo: &str,
    branch: &str,
    sha: &str,
    announced: Timestamp,
) -> Vec<JobSpec> {
    specs(config, repo, branch, sha, announced, Purpose::Build, &[])
}

/// The jobs of a counted rebuild asked for at `asked`: one per builder it names (every builder
/// of the commit when it names none), ordered by when it was asked, so that each comes after
/// every earlier build of its commit. A builder the configuration does not have (any more) gets
/// no job.
pub fn rebuild(config: &BuilderConfig, r: &Rebuild, asked: Timestamp) -> Vec<JobSpec> {
    let Some(purpose) = r.purpose() else {
        return Vec::new();
    };
    specs(
        config,
        &r.repo,
        &r.branch,
        &r.sha,
        asked,
        purpose,
        &r.builders,
    )
}

/// The jobs of one step of a culprit search (its `Probes` record, dated `at`): one per probe,
/// for the commit it names, taken only by the worker it names, once (an exception says nothing
/// of the commit: the search asks another worker).
pub fn probes(
    config: &BuilderConfig,
    search: &Bisect,
    bisection: crate::keys::Hash,
    probes: &[(u32, crate::keys::NodeId)],
    at: Timestamp,
) -> Vec<JobSpec> {
    let Some(b) = config.builder(&search.builder) else {
        return Vec::new();
    };
    probes
        .iter()
        .filter_map(|(index, worker)| {
            let sha = search.shas.get(*index as usize)?;
            let key = JobKey {
                builder: b.name.clone(),
                repo: search.repo.clone(),
                branch: search.branch.clone(),
                sha: sha.clone(),
                purpose: Purpose::Probe {
                    bisection,
                    worker: *worker,
                },
            };
            Some(JobSpec {
                id: key.id(),
                key,
                requires: b.requires.clone(),
                priority: b.priority,
                order: at.millis(),
                max_attempts: 1,
                confirm: crate::health::ConfirmMode::None,
            })
        })
        .collect()
}

fn specs(
    config: &BuilderConfig,
    repo: &str,
    branch: &str,
    sha: &str,
    announced: Timestamp,
    purpose: Purpose,
    only: &[String],
) -> Vec<JobSpec> {
    config
        .builders
        .iter()
        .filter(|b| {
            b.repo == repo && b.wants_branch(branch) && (only.is_empty() || only.contains(&b.name))
        })
        .map(|b| {
            let key = JobKey {
                builder: b.name.clone(),
                repo: repo.to_string(),
                branch: branch.to_string(),
                sha: sha.to_string(),
                purpose,
            };
            JobSpec {
                id: key.id(),
                key,
                requires: b.requires.clone(),
                priority: b.priority,
                order: announced.millis(),
                max_attempts: b.max_attempts,
                confirm: b.confirm_mode(),
            }
        })
        .collect()
}

/// When a job announced at `announced` and first learnt at `now` may be claimed: at once, or
/// after [`OLD_NEWS_WAIT`] if it is old news.
pub fn opens_at(announced: Timestamp, now: Timestamp) -> Timestamp {
    if now.since(announced) > OLD_NEWS {
        now.plus(OLD_NEWS_WAIT)
    } else {
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Hash;

    #[test]
    fn a_commit_gets_a_job_per_matching_builder_and_old_news_waits() {
        let c = BuilderConfig::from_toml(
            Hash::ZERO,
            "version = 1\n\
             [[builder]]\nname = \"a\"\nrepo = \"r\"\nbranches = [\"main\", \"3.*\"]\nmax_attempts = 2\n\
             [[builder.step]]\nname = \"s\"\nrun = \"true\"\n\
             [[builder]]\nname = \"b\"\nrepo = \"r\"\nbranches = [\"main\"]\npriority = 5\n\
             [[builder.step]]\nname = \"s\"\nrun = \"true\"\n\
             [[builder]]\nname = \"c\"\nrepo = \"other\"\nbranches = [\"*\"]\n\
             [[builder.step]]\nname = \"s\"\nrun = \"true\"\n",
        )
        .unwrap();
        let jobs = derive(&c, "r", "3.13", "abc", Timestamp(7));
        assert_eq!(jobs.len(), 1);
        assert_eq!(
            (
                jobs[0].key.builder.as_str(),
                jobs[0].max_attempts,
                jobs[0].order
            ),
            ("a", 2, 7)
        );
        let main: Vec<String> = derive(&c, "r", "main", "abc", Timestamp(7))
            .into_iter()
            .map(|j| j.key.builder)
            .collect();
        assert_eq!(main, ["a", "b"]);
        let t = Timestamp(1_000_000);
        assert_eq!(opens_at(t, t.plus(OLD_NEWS)), t.plus(OLD_NEWS));
        let late = t.plus(OLD_NEWS * 2);
        assert_eq!(opens_at(t, late), late.plus(OLD_NEWS_WAIT));
    }
}
