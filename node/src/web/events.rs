//! `GET /events`: what changed, as Server-Sent Events, for open pages to update themselves.
//!
//! Every change to a build's view becomes a `build` event (its id, builder, branch, commit and
//! result as JSON) and every record other than a heartbeat a `mesh` event. Events carry an
//! increasing id and the newest [`REPLAY`] of them are kept: a client that reconnects with
//! `Last-Event-ID` gets what it missed, or a `reset` event when it missed more than is kept.
//! Ids begin where the process began (its start time in microseconds), so that an id from
//! before a restart is older than everything kept and earns a `reset`, never silence.
//! At most [`MAX_STREAMS`] streams are open at once; past that the answer is 503.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use buildmesh_protocol::record::Record;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use tokio_util::sync::CancellationToken;

use crate::readmodel::BuildView;

/// Events kept for clients that reconnect.
pub const REPLAY: usize = 512;
/// Streams open at once.
pub const MAX_STREAMS: usize = 256;
/// How often an idle stream carries a comment, so that proxies keep it open.
const PING: Duration = Duration::from_secs(15);

/// One event: its id, its name (`build`, `mesh`, `reset`) and its JSON data.
#[derive(Clone, Debug)]
struct Item {
    id: u64,
    name: &'static str,
    data: Arc<str>,
}

/// The events of one node: a bounded replay buffer and the streams that follow it.
#[derive(Debug)]
pub struct EventHub {
    kept: Mutex<VecDeque<Item>>,
    next: Mutex<u64>,
    live: broadcast::Sender<Item>,
    streams: Arc<Semaphore>,
    // Cancelled when the node stops: every open stream ends, so that the server's graceful
    // shutdown, which waits for its connections, is not held up by them.
    stop: CancellationToken,
}

impl EventHub {
    /// A hub whose streams end when `stop` is cancelled.
    pub fn new(stop: CancellationToken) -> Self {
        let first = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64)
            .max(1);
        EventHub {
            kept: Mutex::new(VecDeque::with_capacity(REPLAY)),
            next: Mutex::new(first),
            live: broadcast::channel(REPLAY).0,
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
            stop,
        }
    }

    fn push(&self, name: &'static str, data: String) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let item = Item {
            id: *next,
            name,
            data: data.into(),
        };
        *next += 1;
        if kept.len() == REPLAY {
            kept.pop_front();
        }
        kept.push_back(item.clone());
        // Sent under the lock, so that a stream that read the buffer and then subscribed under
        // it sees every event once.
        let _ = self.live.send(item);
    }

    /// A build's view changed.
    pub fn build_changed(&self, b: &BuildView) {
        let data = serde_json::json!({
            "id": b.id, "builder": b.builder, "branch": b.branch, "sha": b.sha,
            "result": b.result.as_str(),
        });
        self.push("build", data.to_string());
    }

    /// A record arrived (heartbeats are not records: a page of workers also reloads on a
    /// timer, for liveness).
    pub fn record_arrived(&self, r: &Record) {
        let data = serde_json::json!({
            "author": r.envelope.author.to_string(), "kind": r.envelope.kind.name(),
        });
        self.push("mesh", data.to_string());
    }

    /// Some changes were missed (a follower lagged): pages should read everything again.
    pub fn reset(&self) {
        self.push("reset", "{}".to_string());
    }

    /// The newest event id handed out (the one before the first, before any).
    pub fn newest(&self) -> u64 {
        *self.next.lock().unwrap_or_else(|e| e.into_inner()) - 1
    }

    // What a stream that says it saw every event up to `after` is owed first: nothing for a new
    // stream, the kept events after it, or one `reset` when it missed events no longer kept or
    // names an id this process never handed out (one from before a restart, or from another
    // node).
    fn backlog(&self, kept: &VecDeque<Item>, after: Option<u64>) -> VecDeque<Item> {
        let Some(after) = after else {
            return VecDeque::new();
        };
        let next = *self.next.lock().unwrap_or_else(|e| e.into_inner());
        let oldest = kept.front().map_or(next, |f| f.id);
        if after >= next || after + 1 < oldest {
            return VecDeque::from([Item {
                id: next - 1,
                name: "reset",
                data: "{}".into(),
            }]);
        }
        kept.iter().filter(|i| i.id > after).cloned().collect()
    }

    /// The answer to `GET /events`.
    pub fn stream(self: &Arc<Self>, headers: &HeaderMap) -> Response {
        let Ok(permit) = self.streams.clone().try_acquire_owned() else {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{MAX_STREAMS} event streams are open on this node; try again later"),
            )
                .into_response();
        };
        let after = headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let (backlog, rx) = {
            let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            let rx = self.live.subscribe();
            (self.backlog(&kept, after), rx)
        };
        let last_sent = backlog.back().map(|i| i.id);
        let state = Follow {
            backlog,
            rx,
            last_sent,
            stop: self.stop.clone(),
            _permit: permit,
        };
        let events = futures::stream::unfold(state, |mut st| async move {
            let item = match st.backlog.pop_front() {
                Some(i) => i,
                None => loop {
                    let next = tokio::select! {
                        next = st.rx.recv() => next,
                        _ = st.stop.cancelled() => return None,
                    };
                    match next {
                        Ok(i) if st.last_sent.is_some_and(|l| i.id <= l) => continue,
                        Ok(i) => break i,
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            break Item {
                                id: st.last_sent.unwrap_or(0),
                                name: "reset",
                                data: "{}".into(),
                            };
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                },
            };
            st.last_sent = Some(item.id.max(st.last_sent.unwrap_or(0)));
            let event = Event::default()
                .id(item.id.to_string())
                .event(item.name)
                .data(&*item.data);
            Some((Ok::<_, Infallible>(event), st))
        });
        Sse::new(events)
            .keep_alive(KeepAlive::new().interval(PING))
            .into_response()
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        MAX_STREAMS - self.streams.available_permits()
    }
}

struct Follow {
    backlog: VecDeque<Item>,
    rx: broadcast::Receiver<Item>,
    last_sent: Option<u64>,
    stop: CancellationToken,
    // Held while the stream is open: dropped with it.
    _permit: OwnedSemaphorePermit,
}

/// Feeds `hub` from the read model's changes and the records this node takes in, until both
/// end.
pub async fn follow(
    hub: Arc<EventHub>,
    mut views: broadcast::Receiver<Arc<BuildView>>,
    mut records: broadcast::Receiver<Arc<Record>>,
) {
    let (mut views_open, mut records_open) = (true, true);
    while views_open || records_open {
        tokio::select! {
            v = views.recv(), if views_open => match v {
                Ok(b) => hub.build_changed(&b),
                Err(broadcast::error::RecvError::Lagged(_)) => hub.reset(),
                Err(broadcast::error::RecvError::Closed) => views_open = false,
            },
            r = records.recv(), if records_open => match r {
                Ok(r) => hub.record_arrived(&r),
                Err(broadcast::error::RecvError::Lagged(_)) => hub.reset(),
                Err(broadcast::error::RecvError::Closed) => records_open = false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(hub: &EventHub) -> Vec<(u64, &'static str)> {
        hub.kept
            .lock()
            .unwrap()
            .iter()
            .map(|i| (i.id, i.name))
            .collect()
    }

    #[test]
    fn the_replay_buffer_keeps_the_newest_events_with_increasing_ids() {
        let hub = EventHub::new(CancellationToken::new());
        let first = hub.newest() + 1;
        for _ in 0..REPLAY + 10 {
            hub.reset();
        }
        let kept = ids(&hub);
        assert_eq!(kept.len(), REPLAY);
        assert_eq!(kept[0].0, first + 10);
        assert_eq!(kept.last().unwrap().0, first + (REPLAY + 10) as u64 - 1);
        assert_eq!(hub.newest(), first + (REPLAY + 10) as u64 - 1);
    }

    fn owed(hub: &EventHub, after: Option<u64>) -> Vec<(u64, &'static str)> {
        let kept = hub.kept.lock().unwrap();
        hub.backlog(&kept, after)
            .iter()
            .map(|i| (i.id, i.name))
            .collect()
    }

    #[test]
    fn a_reconnecting_stream_gets_what_it_missed_or_a_reset() {
        let hub = EventHub::new(CancellationToken::new());
        let before = hub.newest();
        // Nothing happened yet: a stream that saw everything is owed nothing.
        assert_eq!(owed(&hub, Some(before)), vec![]);
        for _ in 0..REPLAY + 5 {
            hub.push("mesh", "{}".into());
        }
        let newest = hub.newest();
        assert_eq!(owed(&hub, None), vec![], "a new stream starts from now");
        assert_eq!(owed(&hub, Some(newest)), vec![]);
        assert_eq!(
            owed(&hub, Some(newest - 2)),
            vec![(newest - 1, "mesh"), (newest, "mesh")]
        );
        // The oldest kept event is still owed to a stream that saw the one before it.
        assert_eq!(owed(&hub, Some(newest - REPLAY as u64)).len(), REPLAY);
        // Missed more than is kept.
        assert_eq!(
            owed(&hub, Some(newest - REPLAY as u64 - 1)),
            vec![(newest, "reset")]
        );
        // An id from before this process began (a restart): older than anything kept.
        assert_eq!(owed(&hub, Some(3)), vec![(newest, "reset")]);
        // An id this process never handed out (a clock set back, another node's id).
        assert_eq!(owed(&hub, Some(newest + 1)), vec![(newest, "reset")]);
    }

    #[tokio::test]
    async fn streams_past_the_cap_are_refused_until_one_closes() {
        let hub = Arc::new(EventHub::new(CancellationToken::new()));
        let open: Vec<Response> = (0..MAX_STREAMS)
            .map(|_| hub.stream(&HeaderMap::new()))
            .collect();
        assert!(open.iter().all(|r| r.status() == StatusCode::OK));
        assert_eq!(hub.open_streams(), MAX_STREAMS);
        let refused = hub.stream(&HeaderMap::new());
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        drop(open);
        assert_eq!(hub.open_streams(), 0);
        assert_eq!(hub.stream(&HeaderMap::new()).status(), StatusCode::OK);
    }
}
