//! The run's history: events (a page, or followed live from any sequence number) and the
//! audit log.
//!
//! A followed stream subscribes to the store's committed events *before* it reads the
//! backlog, then sends the backlog, then the live events with a sequence number above the last
//! it sent or skipped. Events are numbered without gaps, so a gap in what the subscription
//! delivers (it lagged) is filled from the store. That is why no event is skipped or sent
//! twice, across a reconnect too: the client says the last id it saw and gets exactly what
//! follows.

use std::collections::HashSet;

use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use baton_core::model::TaskId;
use baton_core::{Event, EventKind};
use baton_store::{AuditEntry, AuditQuery, EventQuery};

use crate::{Action, Caller, Error, Grant, Ops, Result, own_only, page_limit};

/// Which events a client wants; serialized as the query string a client sends (absent fields
/// left out).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventFilter {
    /// Only events with a greater sequence number (default 0: from the start). On an SSE
    /// reconnect, `Last-Event-ID` wins.
    pub since: Option<i64>,
    /// Event types, comma-separated (`TaskCompleted,TaskFailed`).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub kinds: Option<String>,
    /// Only events about this agent.
    pub agent: Option<String>,
    /// Only events about this task.
    pub task: Option<i64>,
    /// For `/events/history`: at most this many (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
}

impl EventFilter {
    /// What `caller` may follow of this filter: under [`Grant::Own`], an agent token follows
    /// the events about its own agent only. Refuses a type no event has (a typo would
    /// otherwise match nothing, silently).
    pub fn authorize(mut self, caller: &Caller) -> Result<EventFilter> {
        if caller.require(Action::ReadEvents)? == Grant::Own {
            self.agent = Some(own_only(caller, self.agent.as_deref(), "events")?);
        }
        for kind in self.kinds() {
            if !EventKind::NAMES.contains(&kind.as_str()) {
                let message = baton_core::config::unknown("event type", &kind, EventKind::NAMES);
                return Err(Error::invalid(format!("`type`: {message}")));
            }
        }
        Ok(self)
    }

    fn kinds(&self) -> Vec<String> {
        self.kinds
            .as_deref()
            .map(|kinds| kinds.split(',').map(str::trim).filter(|kind| !kind.is_empty()).map(str::to_string).collect())
            .unwrap_or_default()
    }

    fn query(&self, run_id: &str, since: i64, limit: u64) -> EventQuery {
        EventQuery {
            run_id: Some(run_id.to_string()),
            since,
            task: self.task.map(TaskId),
            limit: Some(limit),
            kinds: self.kinds(),
            agent: self.agent.clone(),
        }
    }

    fn matches(&self, run_id: &str, kinds: &HashSet<String>, event: &Event) -> bool {
        event.run_id == run_id
            && (kinds.is_empty() || kinds.contains(event.kind.name()))
            && self.agent.as_deref().is_none_or(|agent| event.kind.agent() == Some(agent))
            && self.task.is_none_or(|task| event.kind.task() == Some(TaskId(task)))
    }
}

/// Events are read from the store this many at a time.
const PAGE: u64 = 500;

/// Who wants the audit log, and which part.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Only entries with a greater id.
    pub since_id: Option<i64>,
    pub actor: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
}

impl Ops {
    /// A page of the run's events, oldest first.
    pub async fn events(&self, caller: &Caller, filter: EventFilter) -> Result<Vec<Event>> {
        let filter = filter.authorize(caller)?;
        let limit = page_limit(filter.limit, 100)?;
        Ok(self.store().events(&filter.query(self.run_id(), filter.since.unwrap_or(0), limit)).await?)
    }

    /// The sequence number of the newest event (0 before the first): where a stream that
    /// wants only what happens from now on starts.
    pub async fn latest_event(&self) -> Result<i64> {
        Ok(self.store().last_event_seq().await?)
    }

    /// The run's events after `since` that pass `filter` (already [authorized]
    /// (EventFilter::authorize)), then live ones, in order, each once. The stream ends when
    /// `until` (the caller's credentials expire, on the tokio clock), when `stop` fires, or
    /// when the store's subscription closes.
    pub fn follow_events(
        &self,
        filter: EventFilter,
        since: i64,
        stop: CancellationToken,
        until: Option<tokio::time::Instant>,
    ) -> impl Stream<Item = Event> + use<> {
        let (tx, rx) = mpsc::channel::<Event>(256);
        let ops = self.clone();
        tokio::spawn(async move {
            let run_id = ops.run_id().to_string();
            let kinds: HashSet<String> = filter.kinds().into_iter().collect();
            let mut live = ops.store().subscribe();
            // The highest sequence number dealt with (sent or filtered out).
            let mut seen = since;
            if ops.catch_up(&filter, &mut seen, &tx).await.is_err() {
                return;
            }
            let until = async move {
                match until {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(until);
            loop {
                let event = tokio::select! {
                    () = stop.cancelled() => return,
                    () = &mut until => return,
                    () = tx.closed() => return,
                    event = live.recv() => event,
                };
                match event {
                    Ok(event) if event.run_id != run_id || event.seq <= seen => {}
                    Ok(event) if event.seq == seen + 1 => {
                        seen = event.seq;
                        if filter.matches(&run_id, &kinds, &event)
                            && tx.send(std::sync::Arc::unwrap_or_clone(event)).await.is_err()
                        {
                            return;
                        }
                    }
                    // A gap: the subscription lagged. The store has what was missed.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        if ops.catch_up(&filter, &mut seen, &tx).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        ReceiverStream::new(rx)
    }

    /// Sends the stored events after `seen` that pass the filter, page by page, moving `seen`
    /// to the last event read. `Err` when the client has gone.
    async fn catch_up(&self, filter: &EventFilter, seen: &mut i64, tx: &mpsc::Sender<Event>) -> Result<(), ()> {
        let run_id = self.run_id();
        let kinds: HashSet<String> = filter.kinds().into_iter().collect();
        loop {
            // Unfiltered, so that `seen` moves over everything, matching or not.
            let query =
                EventQuery { run_id: Some(run_id.to_string()), since: *seen, limit: Some(PAGE), ..Default::default() };
            let page = match self.store().events(&query).await {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(%error, "reading events for a stream");
                    return Err(());
                }
            };
            let n = page.len() as u64;
            for event in page {
                *seen = (*seen).max(event.seq);
                if filter.matches(run_id, &kinds, &event) {
                    tx.send(event).await.map_err(|_| ())?;
                }
            }
            if n < PAGE {
                return Ok(());
            }
        }
    }

    /// The audit log, newest first (admin only).
    pub async fn audit(&self, caller: &Caller, params: AuditParams) -> Result<Vec<AuditEntry>> {
        caller.require(Action::Administer)?;
        let limit = page_limit(params.limit, 100)?;
        Ok(self
            .store()
            .audit(&AuditQuery {
                since_id: params.since_id,
                actor: params.actor,
                limit: Some(limit),
                newest_first: true,
            })
            .await?)
    }
}
