//! `GET /metrics` in the Prometheus text format, and the per-token rate limiter.
//!
//! Counters and histograms go through the `metrics` facade, so the store (commit latency) and
//! the server (HTTP requests) record the same way. Task and agent figures are read from the
//! store at scrape time (gauges), and the queue-wait and run-time histograms come from the
//! run's events as they are committed: `TaskReady` → `TaskClaimed` is the wait, `TaskClaimed`
//! → `TaskCompleted`/`TaskFailed` the run time.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::sync::broadcast::error::RecvError;

use baton_core::model::TaskState;
use baton_core::{Event, EventKind};

use crate::auth::{Action, Caller};
use crate::{ApiError, AppState};

/// The process's Prometheus recorder (the `metrics` facade has one global recorder).
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

const SECONDS_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0];

impl Metrics {
    /// Installs the recorder once per process; later calls share it.
    pub fn install() -> Metrics {
        let handle = HANDLE
            .get_or_init(|| {
                let recorder = PrometheusBuilder::new()
                    .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                    .and_then(|builder| {
                        builder.set_buckets_for_metric(
                            Matcher::Suffix("_size".into()),
                            &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0],
                        )
                    })
                    .expect("static buckets are valid")
                    .build_recorder();
                let handle = recorder.handle();
                // Another recorder may be installed already (a test harness); then ours only renders.
                let _ = metrics::set_global_recorder(recorder);
                baton_store::metrics::describe();
                // Counters of rare trouble are exported from the start, at zero, so that an
                // alert on their increase has a series to look at before the first one.
                metrics::counter!("baton_metrics_events_missed_total").increment(0);
                metrics::counter!("baton_http_unaudited_total").increment(0);
                handle
            })
            .clone();
        Metrics { handle }
    }

    pub fn http_request(&self, method: &str, route: &str, status: u16, took: Duration) {
        let labels = [("method", method.to_string()), ("route", route.to_string()), ("status", status.to_string())];
        metrics::counter!("baton_http_requests_total", &labels).increment(1);
        let labels = [("method", method.to_string()), ("route", route.to_string())];
        metrics::histogram!("baton_http_request_duration_seconds", &labels).record(took.as_secs_f64());
    }
}

pub fn routes() -> Router<AppState> {
    Router::new().route("/metrics", axum::routing::get(scrape))
}

/// Prometheus metrics: tasks by state, agents by state, queue wait and run time, restarts,
/// events, store commits, HTTP requests.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String)))]
pub async fn scrape(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Action::ReadMetrics)?;
    let run_id = state.run_id().to_string();
    let counts = state.task_counts().await?;
    for task_state in TaskState::ALL {
        let n = counts.iter().find(|(state, _)| state == &task_state).map_or(0, |(_, n)| *n);
        metrics::gauge!("baton_tasks", "state" => task_state.as_str()).set(n as f64);
    }
    let agents = state.store().agents(&run_id).await?;
    let mut by_state: HashMap<&'static str, u64> = HashMap::new();
    for agent in &agents {
        *by_state.entry(agent.state.as_str()).or_default() += 1;
    }
    for agent_state in baton_core::model::AgentState::ALL {
        metrics::gauge!("baton_agents", "state" => agent_state.as_str())
            .set(by_state.get(agent_state.as_str()).copied().unwrap_or(0) as f64);
    }
    metrics::gauge!("baton_uptime_seconds").set(state.uptime().as_secs_f64());
    let text = state.shared.metrics.handle.render();
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text))
}

/// Turns committed events into metrics, until `stop` fires.
pub async fn follow_events(state: AppState, stop: tokio_util::sync::CancellationToken) {
    let mut events = state.store().subscribe();
    let mut tracker = Timings::default();
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = events.recv() => event,
        };
        match event {
            Ok(event) => tracker.observe(&event),
            Err(RecvError::Lagged(n)) => metrics::counter!("baton_metrics_events_missed_total").increment(n),
            Err(RecvError::Closed) => return,
        }
    }
}

/// When each task became ready and was claimed, for the wait and run-time histograms.
#[derive(Default)]
struct Timings {
    ready_at: HashMap<i64, i64>,
    claimed_at: HashMap<i64, (i64, String)>,
}

impl Timings {
    fn observe(&mut self, event: &Event) {
        metrics::counter!("baton_events_total", "type" => event.kind.name()).increment(1);
        let at = event.at.millis();
        match &event.kind {
            EventKind::TaskReady { task } => {
                self.ready_at.insert(task.0, at);
            }
            EventKind::TaskClaimed { task, agent, .. } => {
                if let Some(ready) = self.ready_at.remove(&task.0) {
                    metrics::histogram!("baton_task_queue_wait_seconds").record(millis_to_secs(at - ready));
                }
                self.claimed_at.insert(task.0, (at, agent.clone()));
            }
            EventKind::TaskCompleted { task, .. } | EventKind::TaskFailed { task, .. } => {
                if let Some((claimed, agent)) = self.claimed_at.remove(&task.0) {
                    let outcome =
                        if matches!(event.kind, EventKind::TaskCompleted { .. }) { "succeeded" } else { "failed" };
                    metrics::histogram!("baton_task_run_seconds", "outcome" => outcome, "agent" => agent)
                        .record(millis_to_secs(at - claimed));
                }
            }
            EventKind::TaskCancelled { task, .. } | EventKind::TaskDeadLettered { task, .. } => {
                self.ready_at.remove(&task.0);
                self.claimed_at.remove(&task.0);
            }
            EventKind::AgentStateChanged { agent, to, .. } if *to == baton_core::model::AgentState::Restarting => {
                metrics::counter!("baton_agent_restarts_total", "agent" => agent.clone()).increment(1);
            }
            _ => {}
        }
    }
}

fn millis_to_secs(millis: i64) -> f64 {
    millis.max(0) as f64 / 1000.0
}

/// Requests per second per token, with a burst.
pub struct Limiter {
    limiter: DefaultKeyedRateLimiter<String>,
    /// Checks since the keys were last pruned: a key (a token, a client address) is kept
    /// only while its bucket is not full again, so many one-off clients cost no memory.
    n_checks: std::sync::atomic::AtomicU64,
}

impl Limiter {
    pub fn new(per_second: u32, burst: u32) -> Limiter {
        let per_second = NonZeroU32::new(per_second.max(1)).expect("at least 1");
        let burst = NonZeroU32::new(burst.max(1)).expect("at least 1");
        Limiter {
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            n_checks: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Err(seconds to wait)` when the key is over its limit.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        const PRUNE_EVERY: u64 = 4096;
        if (self.n_checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1).is_multiple_of(PRUNE_EVERY) {
            self.limiter.retain_recent();
        }
        match self.limiter.check_key(&key.to_string()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Err(wait.as_secs_f64().ceil().max(1.0) as u64)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_allows_the_burst_then_says_how_long_to_wait() {
        let limiter = Limiter::new(1, 3);
        for _ in 0..3 {
            assert_eq!(limiter.check("a"), Ok(()));
        }
        assert_eq!(limiter.check("a"), Err(1));
        // Per key: another token is not held back.
        assert_eq!(limiter.check("b"), Ok(()));
    }
}
