//! The announcer's git poller: every `poll_interval`, `git ls-remote` on each repository the
//! builders name, and a `CommitSeen` record for every wanted branch whose head moved.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use buildmesh_protocol::record::{Body, ChangeSource, CommitSeen};
use buildmesh_store::Store;
use tokio_util::sync::CancellationToken;

use crate::replica::ReplicaClient;
use crate::sources::poller::{PollState, ls_remote};

/// Polls until cancelled.
pub(crate) async fn poll(
    interval: Duration,
    replica: ReplicaClient,
    store: Arc<Store>,
    cancel: CancellationToken,
) {
    let mut state = PollState::new();
    let mut seeded: BTreeSet<String> = BTreeSet::new();
    let mut every = tokio::time::interval(interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = every.tick() => {}
        }
        let Ok(Some(config)) = replica.config().await else {
            continue;
        };
        let repos: BTreeSet<String> = config.builders.iter().map(|b| b.repo.clone()).collect();
        for repo in repos {
            let heads = match ls_remote(&repo, Duration::from_secs(60)).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(%repo, error = %e, "poll failed");
                    continue;
                }
            };
            if seeded.insert(repo.clone()) {
                // What the mesh already announced is not announced again after a restart.
                for branch in heads.keys() {
                    if let Ok(refs) = store.commits(&repo, branch, 1)
                        && let Some(r) = refs.first()
                        && let Ok(Some(rec)) = store.record(&r.author, r.seq)
                        && let Ok(Body::CommitSeen(c)) = rec.body()
                    {
                        state.remember(&repo, branch, &c.sha);
                    }
                }
            }
            let wanted = |branch: &str| {
                config
                    .builders
                    .iter()
                    .any(|b| b.repo == repo && b.wants_branch(branch))
            };
            for (branch, sha) in state.changes(&repo, &heads, wanted) {
                let body = Body::CommitSeen(CommitSeen {
                    repo: repo.clone(),
                    branch: branch.clone(),
                    sha: sha.clone(),
                    source: ChangeSource::Poller,
                    requested_by: None,
                    subject: None,
                    request: None,
                });
                match replica.author(body).await {
                    Ok(_) => tracing::info!(%repo, %branch, %sha, "new commit polled"),
                    Err(e) => tracing::warn!(%repo, error = %e, "cannot announce a polled commit"),
                }
            }
        }
    }
}
