//! The post office: delivers stored messages to the agents that take them (workers), and
//! tries again with backoff until they are acknowledged or dead-lettered.
//!
//! Messages are durable before anyone is told of them (`Store::send_message`); delivery is
//! at-least-once: each round hands every worker its due messages at once
//! (`AgentRuntime::deliver_batch`: one `message/deliver_batch`, or one `message/deliver` per
//! message), and settles all the round's outcomes in one store operation. A worker acknowledges
//! a message by answering its `message/deliver` (or listing it in its batch's answer), and one that
//! does not (busy, crashed, slow) gets it again after 1 s, 2 s, 4 s… until the last try, after
//! which the message is dead-lettered with an event. Per-task agents take their messages with
//! their next task (see `process::ProcessAgent`).
//!
//! A message sent through the post office ([`PostOffice::send`]) is handed to the delivery loop
//! in memory once it is stored, so that the loop does not read back from the store what was just
//! written there: the store is read for the rest (messages tried again after a backoff, and those
//! stored without the post office, e.g. by a benchmark), at least every 250 ms while handed
//! messages keep it busy, and whenever nothing was handed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use baton_core::messages::{self, Delivery, DeliveryState, MAX_DELIVERY_ATTEMPTS, NewMessage, Recipient};
use baton_store::{DeliveryOutcome, Store};

use crate::agent::{AgentError, AgentRuntime, RequestError};
use crate::clock::Clock;

/// How long an agent has to acknowledge one delivery.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the post office looks for due messages when nobody wakes it, at most...
const POLL: Duration = Duration::from_millis(250);

/// ...and at first: right after a busy spell it looks again soon, doubling the wait while it
/// finds nothing. Messages stored without the post office (a sender that calls the store) are
/// then picked up within milliseconds while traffic flows,
/// at the cost of a few cheap reads when it stops.
const FIRST_POLL: Duration = Duration::from_millis(2);

/// Most deliveries read from the store for one round.
const BATCH: u64 = 512;

/// Most handed deliveries taken in one round (they cost no read, and a busy spell's rounds are
/// paced by the store's commits: larger rounds keep the delivery loop up with the senders).
const HANDED_BATCH: usize = 2048;

/// The agents messages can reach, by name.
type Runtimes = Arc<HashMap<String, Arc<dyn AgentRuntime>>>;

/// Sends and delivers the messages of one run. Cheap to clone.
#[derive(Clone)]
pub struct PostOffice {
    store: Arc<dyn Store>,
    run_id: String,
    /// The run's agents, replaced when the plan changes ([`PostOffice::set_runtimes`]). A std
    /// lock: held only to read or swap the map, never across an `.await`.
    runtimes: Arc<RwLock<Runtimes>>,
    /// Topics each agent follows. A std mutex: held only to read or update the map.
    topics: Arc<Mutex<HashMap<String, Vec<String>>>>,
    /// Deliveries stored by [`PostOffice::send`] and not yet taken by the delivery loop, oldest
    /// first (only those to agents that take messages). At most one per pending delivery in the
    /// store, so bounded by the inboxes' limit. A std mutex: held only to push or take.
    handed: Arc<Mutex<VecDeque<Delivery>>>,
    wake: Arc<Notify>,
    clock: Clock,
}

impl PostOffice {
    pub fn new(
        store: Arc<dyn Store>,
        run_id: String,
        runtimes: Arc<HashMap<String, Arc<dyn AgentRuntime>>>,
        clock: Clock,
    ) -> PostOffice {
        PostOffice {
            store,
            run_id,
            runtimes: Arc::new(RwLock::new(runtimes)),
            topics: Arc::new(Mutex::new(HashMap::new())),
            handed: Arc::new(Mutex::new(VecDeque::new())),
            wake: Arc::new(Notify::new()),
            clock,
        }
    }

    /// The agents changed (added, updated or removed while the run goes on).
    pub fn set_runtimes(&self, runtimes: Runtimes) {
        *self.runtimes.write().unwrap_or_else(|p| p.into_inner()) = runtimes;
        self.wake.notify_one();
    }

    fn runtimes(&self) -> Runtimes {
        Arc::clone(&self.runtimes.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// `agent` follows `topic` from now on. The first agent to follow a topic is handed the
    /// messages held for it (sent while nobody followed it), off the caller's turn.
    pub fn subscribe(&self, agent: &str, topic: &str) {
        let first = {
            let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
            let first = !topics.values().any(|followed| followed.iter().any(|known| known == topic));
            let followed = topics.entry(agent.to_string()).or_default();
            if followed.iter().any(|known| known == topic) {
                return;
            }
            followed.push(topic.to_string());
            first
        };
        if first {
            let (post, agent, topic) = (self.clone(), agent.to_string(), topic.to_string());
            tokio::spawn(async move { post.hand_over_held(&agent, &topic).await });
        }
    }

    /// Hands the messages held for `topic` to `agent`, and wakes the delivery loop, which finds
    /// them due in the store.
    async fn hand_over_held(&self, agent: &str, topic: &str) {
        let holder = messages::topic_holder(topic);
        match self.store.hand_over(&self.run_id, &holder, agent, self.clock.now()).await {
            Ok(handed) if handed.is_empty() => {}
            Ok(handed) => {
                tracing::info!(
                    agent,
                    topic,
                    n = handed.len(),
                    "messages held for a topic handed to its first follower"
                );
                self.wake.notify_one();
            }
            Err(error) => tracing::warn!(%error, agent, topic, "cannot hand over the messages held for a topic"),
        }
    }

    /// Records messages a per-task agent was handed with its task as acknowledged.
    pub async fn acknowledge(&self, deliveries: Vec<Delivery>, now: baton_core::Timestamp) {
        let outcomes = deliveries.into_iter().map(|delivery| (delivery, DeliveryOutcome::Acked)).collect();
        if let Err(error) = self.store.settle_deliveries(&self.run_id, outcomes, now).await {
            tracing::warn!(%error, "cannot acknowledge an agent's messages");
        }
    }

    /// Stores a message for its recipients, hands its deliveries to the delivery loop and wakes
    /// it. Returns its id once the message is durable.
    pub async fn send(&self, message: NewMessage) -> Result<String, RequestError> {
        let runtimes = self.runtimes();
        let recipients = match &message.to {
            Recipient::Agent(name) if name != messages::OPERATOR && !runtimes.contains_key(name) => {
                let known: Vec<&str> = runtimes.keys().map(String::as_str).collect();
                return Err(RequestError::refused(
                    messages::resolve_mentions(&format!("@{name}"), &known).unwrap_err(),
                ));
            }
            // One recipient: no list of every agent and its topics to build.
            Recipient::Agent(name) => vec![name.clone()],
            to => {
                let agents: Vec<(String, Vec<String>)> = {
                    let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
                    runtimes.keys().map(|name| (name.clone(), topics.get(name).cloned().unwrap_or_default())).collect()
                };
                messages::recipients(to, &message.from, &agents)
            }
        };
        let recipients = match (&message.to, recipients.is_empty()) {
            // Nobody follows the topic yet: the message is held for its first follower.
            (Recipient::Topic(topic), true) => vec![messages::topic_holder(topic)],
            (_, true) => return Err(RequestError::refused("the message reaches nobody (there is no other agent)")),
            (_, false) => recipients,
        };
        let id = uuid::Uuid::now_v7().to_string();
        let now = self.clock.now();
        // What the delivery loop is handed once the message is stored: its deliveries to the
        // agents that take messages (the others take theirs from the store).
        let takers: Vec<bool> =
            recipients.iter().map(|name| runtimes.get(name).is_some_and(|runtime| runtime.takes_messages())).collect();
        let kept = takers.contains(&true).then(|| (message.clone(), recipients.clone()));
        let ids = self
            .store
            .send_message(&self.run_id, id.clone(), message, recipients, now)
            .await
            .map_err(crate::engine::store_refusal)?;
        if let Some((message, recipients)) = kept {
            let topic = match &message.to {
                Recipient::Topic(topic) => Some(topic.clone()),
                _ => None,
            };
            let deliveries: Vec<Delivery> = ids
                .into_iter()
                .zip(recipients)
                .zip(takers)
                .filter(|(_, taker)| *taker)
                .map(|((delivery_id, to), _)| Delivery {
                    id: delivery_id,
                    message_id: id.clone(),
                    from: message.from.clone(),
                    to,
                    topic: topic.clone(),
                    body: message.body.clone(),
                    data: message.data.clone(),
                    task: message.task,
                    correlation_id: message.correlation_id.clone(),
                    state: DeliveryState::Pending,
                    attempts: 0,
                    next_attempt_at: now,
                    created_at: now,
                    error: None,
                    acked_at: None,
                })
                .collect();
            self.handed.lock().unwrap_or_else(|p| p.into_inner()).extend(deliveries);
        }
        self.wake.notify_one();
        Ok(id)
    }

    /// Dead letters back to pending (those of `ids`, or all of the run's), then wakes the
    /// delivery loop: they are delivered again at once. Returns the ids redelivered.
    pub async fn redeliver(&self, ids: Option<Vec<i64>>) -> Result<Vec<i64>, baton_store::Error> {
        let redelivered = self.store.redeliver(&self.run_id, ids, self.clock.now()).await?;
        self.wake.notify_one();
        Ok(redelivered)
    }

    /// Delivers due messages until `cancel` fires.
    ///
    /// Rounds overlap: while the outcomes of one round are being committed, the next round is
    /// read and delivered, leaving out the deliveries still being settled (they are pending in
    /// the store until that commit). A round therefore does not wait for the previous one's fsync.
    pub async fn run(self, cancel: CancellationToken) {
        // The round being committed: the ids it settles, and the commit.
        let mut settling: Option<(HashSet<i64>, BoxFuture<'static, ()>)> = None;
        let mut more = false;
        let mut poll = POLL;
        // When the store was last read, and the deliveries that read found lately (a message is
        // handed over just after its commit, so a read may find it first: it is not delivered
        // twice for that).
        let mut last_read: Option<Instant> = None;
        let mut found_lately: HashMap<i64, Instant> = HashMap::new();
        loop {
            if cancel.is_cancelled() {
                break;
            }
            // Work found in the last round (or a commit that was still going on) means more may
            // be due: no waiting then.
            if more {
                poll = FIRST_POLL;
            } else {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(poll) => {}
                }
                poll = (poll * 2).min(POLL);
            }
            // Read each round: agents come and go with the plan.
            let runtimes = self.runtimes();
            let takers: Vec<String> =
                runtimes.iter().filter(|(_, runtime)| runtime.takes_messages()).map(|(name, _)| name.clone()).collect();
            if takers.is_empty() {
                more = false;
                continue;
            }
            // Handed messages first: no store read for them.
            let mut due: Vec<Delivery> = {
                let mut handed = self.handed.lock().unwrap_or_else(|p| p.into_inner());
                let n = handed.len().min(HANDED_BATCH);
                handed.drain(..n).filter(|delivery| !found_lately.contains_key(&delivery.id)).collect()
            };
            // Deliveries to agents that no longer take messages stay pending in the store.
            due.retain(|delivery| takers.contains(&delivery.to));
            let handed_left = !self.handed.lock().unwrap_or_else(|p| p.into_inner()).is_empty();
            let read_store = due.is_empty() || last_read.is_none_or(|at| at.elapsed() >= POLL);
            if read_store {
                let started = Instant::now();
                last_read = Some(started);
                found_lately.retain(|_, at| started.duration_since(*at) < POLL);
                // What the post office holds already (being settled, taken this round, handed
                // and not taken yet) is left out of what it reads.
                let mut held: HashSet<i64> = settling.as_ref().map(|(ids, _)| ids.clone()).unwrap_or_default();
                held.extend(due.iter().map(|delivery| delivery.id));
                held.extend(self.handed.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|delivery| delivery.id));
                let limit = BATCH + held.len() as u64;
                match self.store.due_deliveries(&self.run_id, &takers, self.clock.now(), limit).await {
                    Ok(read) => {
                        for delivery in read {
                            if !held.contains(&delivery.id) {
                                found_lately.insert(delivery.id, started);
                                due.push(delivery);
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot read the messages to deliver");
                        if due.is_empty() {
                            continue;
                        }
                    }
                }
            }
            let previous = settling.take();
            more = !due.is_empty() || previous.is_some() || handed_left;
            let runtimes = &runtimes;
            // One batch per recipient, in the order the store gave them (oldest first).
            let mut batches: Vec<(String, Vec<Delivery>)> = Vec::new();
            for delivery in due {
                match batches.iter_mut().find(|(to, _)| *to == delivery.to) {
                    Some((_, batch)) => batch.push(delivery),
                    None => batches.push((delivery.to.clone(), vec![delivery])),
                }
            }
            let attempts = batches.into_iter().map(|(to, batch)| async move {
                let results = match runtimes.get(&to).cloned() {
                    Some(runtime) => {
                        match tokio::time::timeout(DELIVERY_TIMEOUT, runtime.deliver_batch(&batch)).await {
                            Ok(results) => results,
                            Err(_) => vec![Err(AgentError::transient("not acknowledged in time")); batch.len()],
                        }
                    }
                    None => vec![Err(AgentError::transient(format!("no agent {to}"))); batch.len()],
                };
                debug_assert_eq!(results.len(), batch.len(), "one result per delivery");
                // A delivery without a result was not acknowledged: it is tried again.
                let mut results = results;
                results.resize(batch.len(), Err(AgentError::transient("not acknowledged")));
                batch.into_iter().zip(results).collect::<Vec<_>>()
            });
            let committed = async {
                if let Some((_, commit)) = previous {
                    commit.await;
                }
            };
            let (results, ()) = tokio::join!(futures::future::join_all(attempts), committed);
            let results: Vec<(Delivery, Result<(), AgentError>)> = results.into_iter().flatten().collect();
            if results.is_empty() {
                continue;
            }
            let now = self.clock.now();
            let ids: HashSet<i64> = results.iter().map(|(delivery, _)| delivery.id).collect();
            let outcomes: Vec<(Delivery, DeliveryOutcome)> = results
                .into_iter()
                .map(|(delivery, result)| {
                    let outcome = settle(&delivery, result, now);
                    (delivery, outcome)
                })
                .collect();
            let store = Arc::clone(&self.store);
            let run_id = self.run_id.clone();
            let commit = Box::pin(async move {
                if let Err(error) = store.settle_deliveries(&run_id, outcomes, now).await {
                    tracing::warn!(%error, "cannot record message deliveries");
                }
            });
            settling = Some((ids, commit));
        }
        // What was delivered is recorded before the post office stops.
        if let Some((_, commit)) = settling {
            commit.await;
        }
    }
}

/// What becomes of a delivery after one try: acknowledged, tried again after a backoff, or
/// dead after the last try.
/// A failure that is permanent (the agent cannot take messages this way) dead-letters the
/// message at once: trying again would fail the same way.
pub fn settle(delivery: &Delivery, result: Result<(), AgentError>, now: baton_core::Timestamp) -> DeliveryOutcome {
    match result {
        Ok(()) => DeliveryOutcome::Acked,
        Err(error) if error.is_permanent() || delivery.attempts + 1 >= MAX_DELIVERY_ATTEMPTS => {
            DeliveryOutcome::Dead { error: error.message }
        }
        Err(error) => DeliveryOutcome::Retry {
            at: now.plus(messages::redelivery_delay(delivery.attempts + 1)),
            error: error.message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::Timestamp;
    use baton_core::messages::DeliveryState;

    fn delivery(attempts: u32) -> Delivery {
        Delivery {
            id: 1,
            message_id: "m".into(),
            from: "a".into(),
            to: "b".into(),
            topic: None,
            body: "hi".into(),
            data: serde_json::Value::Null,
            task: None,
            correlation_id: None,
            state: DeliveryState::Pending,
            attempts,
            next_attempt_at: Timestamp(0),
            created_at: Timestamp(0),
            error: None,
            acked_at: None,
        }
    }

    #[test]
    fn unacknowledged_messages_back_off_then_die() {
        let now = Timestamp(10_000);
        assert_eq!(settle(&delivery(0), Ok(()), now), DeliveryOutcome::Acked);
        let delays: Vec<i64> = (0..4)
            .map(|attempts| match settle(&delivery(attempts), Err(AgentError::transient("busy")), now) {
                DeliveryOutcome::Retry { at, .. } => at.0 - now.0,
                other => panic!("expected a retry, got {other:?}"),
            })
            .collect();
        assert_eq!(delays, vec![1_000, 2_000, 4_000, 8_000]);
        assert_eq!(
            settle(&delivery(MAX_DELIVERY_ATTEMPTS - 1), Err(AgentError::transient("busy")), now),
            DeliveryOutcome::Dead { error: "busy".into() }
        );
        // An agent that cannot take messages this way will not take this one later either.
        assert_eq!(
            settle(&delivery(0), Err(AgentError::permanent("no inbox")), now),
            DeliveryOutcome::Dead { error: "no inbox".into() }
        );
    }
}
