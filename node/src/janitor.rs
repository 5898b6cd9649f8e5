//! The janitor: deletes the step logs whose builds' retention passed (`keep_logs`,
//! `keep_passing_logs`; the claimer sets each log's date as it views the build), and keeps the
//! database under `[store] disk_budget` by deleting the logs due first. It works in small
//! batches off the async workers, so the node serves on meanwhile. The signed records stay:
//! they are the history.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use buildmesh_protocol::Timestamp;
use buildmesh_store::{Expired, Store};
use tokio_util::sync::CancellationToken;

use crate::config::StoreSettings;

/// Blobs deleted per batch.
const BATCH: usize = 256;
/// The pause between batches.
const BREATHE: Duration = Duration::from_millis(20);

/// What the janitor deleted (`/metrics`).
#[derive(Debug, Default)]
pub struct JanitorStats {
    /// Step logs deleted.
    pub logs_expired: AtomicU64,
    /// Their stored bytes.
    pub bytes_expired: AtomicU64,
    /// Of those, the logs deleted early for the disk budget.
    pub logs_over_budget: AtomicU64,
}

pub(crate) struct Janitor {
    store: Arc<Store>,
    settings: StoreSettings,
    stats: Arc<JanitorStats>,
    // sled frees deleted space slowly: bytes deleted for the budget that the database's size
    // does not show yet, and the size last seen.
    unseen: u64,
    last_size: Option<u64>,
}

impl Janitor {
    pub(crate) fn new(store: Arc<Store>, settings: StoreSettings) -> (Self, Arc<JanitorStats>) {
        let stats = Arc::new(JanitorStats::default());
        let j = Janitor {
            store,
            settings,
            stats: stats.clone(),
            unseen: 0,
            last_size: None,
        };
        (j, stats)
    }

    pub(crate) async fn run(mut self, cancel: CancellationToken) {
        let mut every = tokio::time::interval(self.settings.janitor_interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = every.tick() => self.pass(&cancel).await,
            }
        }
    }

    // One round: what expired, then what the budget asks for.
    async fn pass(&mut self, cancel: &CancellationToken) {
        let now = Timestamp::now();
        let expired = self.drain(now, u64::MAX, cancel).await;
        if expired.blobs > 0 {
            tracing::info!(
                logs = expired.blobs,
                bytes = expired.bytes,
                "janitor deleted expired step logs"
            );
        }
        let Some(budget) = self.settings.disk_budget else {
            return;
        };
        let Ok(size) = self.store.size_on_disk() else {
            return;
        };
        if let Some(last) = self.last_size {
            self.unseen = self.unseen.saturating_sub(last.saturating_sub(size));
        }
        self.last_size = Some(size);
        let excess = size.saturating_sub(budget).saturating_sub(self.unseen);
        if excess == 0 {
            return;
        }
        // Far ahead: the logs due first go first.
        let early = self.drain(Timestamp(u64::MAX), excess, cancel).await;
        self.unseen += early.bytes;
        self.stats
            .logs_over_budget
            .fetch_add(early.blobs, Ordering::Relaxed);
        if early.bytes < excess {
            tracing::warn!(
                size,
                budget,
                freed = early.bytes,
                "over the disk budget with no step log left to delete (records are kept)"
            );
        } else {
            tracing::info!(
                logs = early.blobs,
                bytes = early.bytes,
                size,
                budget,
                "janitor deleted step logs early for the disk budget"
            );
        }
    }

    // Deletes the logs due before `before`, batch by batch, until `bytes` are freed or none is
    // left.
    async fn drain(&self, before: Timestamp, bytes: u64, cancel: &CancellationToken) -> Expired {
        let mut total = Expired::default();
        while total.bytes < bytes && !cancel.is_cancelled() {
            let store = self.store.clone();
            let batch = match tokio::task::spawn_blocking(move || store.expire_blobs(before, BATCH))
                .await
            {
                Ok(Ok(e)) => e,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "janitor cannot delete step logs");
                    break;
                }
                Err(_) => break,
            };
            total.blobs += batch.blobs;
            total.bytes += batch.bytes;
            self.stats
                .logs_expired
                .fetch_add(batch.blobs, Ordering::Relaxed);
            self.stats
                .bytes_expired
                .fetch_add(batch.bytes, Ordering::Relaxed);
            if !batch.more {
                break;
            }
            tokio::time::sleep(BREATHE).await;
        }
        total
    }
}
