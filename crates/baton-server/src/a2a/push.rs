//! A2A push notifications: the configs clients set on tasks (`CreateTaskPushNotificationConfig`
//! and the rest, or `configuration.taskPushNotificationConfig` of `SendMessage`), and the
//! followers that deliver a task's updates to them.
//!
//! A config's webhook must be on a host `[a2a] push_hosts` names; with none (the default) the
//! server sends no push notifications and its card says so. The configs are kept in the store
//! (written through, with the webhook's credentials) and in memory: a restarted server loads
//! them ([`crate::a2a::restore_push_configs`]), checks their webhooks against `push_hosts` again
//! and follows their unfinished tasks as the clients that set the configs read them (role,
//! agent, endpoint and token expiry are kept with each config), the first update each config
//! hears being the task as it is then. A task with configs has one follower: it reads the task's updates as a
//! stream does (the task, then a status update per change, the artifact before the final
//! status) from the event log, not from the engine, and posts each to every config of the task
//! in turn (a slow webhook holds back that task's notifications only; the stream it reads
//! from is bounded, so it never buffers without limit). It ends when the task ends or the
//! server shuts down. At most [`MAX_CONFIGS`] configs are kept, [`MAX_PER_TASK`] per task;
//! when full, the configs of the tasks that ended longest ago make room.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::StreamExt;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use baton_core::model::TaskId;
use baton_ops::Caller;
use baton_runtime::a2a::push::{Sender, Webhook};
use baton_store::PushConfigRecord;

/// Configs kept at once, for every task together.
pub const MAX_CONFIGS: usize = 10_000;
/// Configs one task may have.
pub const MAX_PER_TASK: usize = 16;
/// Configs one client (token) may have, for every task together: one client cannot take the
/// room of all.
pub const MAX_PER_OWNER: usize = 1_000;

/// A config as a client set it.
#[derive(Debug, Clone)]
pub struct Config {
    pub id: String,
    pub task_id: TaskId,
    pub webhook: Webhook,
    /// The authentication's scheme; its credentials are in the webhook, never shown.
    pub scheme: Option<String>,
    /// The token that set it (its id): only it, or an admin, may replace or delete it, or see
    /// its `token`.
    pub owner: String,
    /// Who set it, and through which endpoint: a restarted server follows the task as this
    /// reader, so the webhook hears no more than its owner may still read.
    pub reader: Reader,
}

/// The caller that set a config and the agent its endpoint served (`/a2a/agents/{name}`), if
/// one: what a task's follower reads the task as.
#[derive(Debug, Clone)]
pub struct Reader {
    pub caller: Caller,
    pub scope: Option<String>,
}

impl Reader {
    fn to_json(&self) -> Value {
        let caller = &self.caller;
        json!({
            "subject": caller.subject, "role": caller.role.as_str(), "agent": caller.agent,
            "token_id": caller.token_id, "expires_at": caller.expires_at, "scope": self.scope,
        })
    }

    fn from_json(value: &Value) -> Result<Reader, String> {
        let text = |name: &str| value.get(name).and_then(Value::as_str).map(str::to_string);
        let role = text("role").ok_or("its owner's role is not kept")?.parse()?;
        let caller = Caller {
            subject: text("subject").unwrap_or_default(),
            role,
            agent: text("agent"),
            token_id: text("token_id").ok_or("its owner's token is not kept")?,
            expires_at: value.get("expires_at").and_then(Value::as_u64),
        };
        Ok(Reader { caller, scope: text("scope") })
    }

    /// Whether the token that set the config has expired at `now` (seconds since the epoch).
    pub fn expired(&self, now: u64) -> bool {
        self.caller.expires_at.is_some_and(|at| at <= now)
    }
}

impl Config {
    /// As the protocol writes a `TaskPushNotificationConfig` (the credentials left out; the
    /// `token` too unless `yours`).
    pub fn to_json(&self, yours: bool) -> Value {
        let mut value = json!({ "id": self.id, "taskId": self.task_id.to_string(), "url": self.webhook.url.as_str() });
        if let Some(token) = self.webhook.token.as_ref().filter(|_| yours) {
            value["token"] = json!(token);
        }
        if let Some(scheme) = &self.scheme {
            value["authentication"] = json!({ "scheme": scheme });
        }
        value
    }
}

impl Config {
    /// As the store keeps it: the webhook (with its credentials) and the scheme as JSON.
    pub fn to_record(&self) -> PushConfigRecord {
        PushConfigRecord {
            task: self.task_id,
            id: self.id.clone(),
            owner: self.owner.clone(),
            config: json!({
                "url": self.webhook.url.as_str(),
                "token": self.webhook.token,
                "authorization": self.webhook.authorization,
                "scheme": self.scheme,
                "reader": self.reader.to_json(),
            }),
        }
    }

    /// A config the store kept, its URL checked again by `check` (the server's `push_hosts`
    /// may have changed since): `Err` says why it is not taken. One kept by an earlier baton,
    /// which did not say who set it, is not taken: it is to be set again.
    pub fn from_record(
        record: PushConfigRecord,
        check: impl Fn(&str) -> Result<baton_runtime::a2a::push::Url, String>,
    ) -> Result<Config, String> {
        let field = |name: &str| record.config.get(name).and_then(Value::as_str).map(str::to_string);
        let url = check(&field("url").ok_or("no url")?)?;
        let reader = Reader::from_json(record.config.get("reader").unwrap_or(&Value::Null))
            .map_err(|why| format!("{why} (it was set by an earlier version of baton): set it again"))?;
        if reader.caller.token_id != record.owner {
            return Err("its owner and the token kept with it differ".to_string());
        }
        let webhook = Webhook { url, token: field("token"), authorization: field("authorization") };
        let scheme = field("scheme");
        Ok(Config { id: record.id, task_id: record.task, webhook, scheme, owner: record.owner, reader })
    }
}

#[derive(Default)]
struct Entry {
    configs: Vec<Config>,
    following: bool,
    /// When the task's follower saw it end (a count of ends, for eviction), if it has.
    ended: Option<u64>,
}

#[derive(Default)]
struct Inner {
    tasks: HashMap<TaskId, Entry>,
    n_configs: usize,
    n_ended: u64,
    /// Tasks whose configs made room for others since [`Registry::take_evicted`] was last
    /// called: their configs are to be deleted from the store too.
    evicted: Vec<TaskId>,
}

/// Every task's configs, and which tasks are followed. A `std` mutex: held only to read or
/// change the map, never across an `.await`.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
    sender: Sender,
    /// Whether the configs kept in the store were loaded (or are being).
    restored: std::sync::atomic::AtomicBool,
}

/// Why a config is not kept.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    TooManyForTask,
    TooManyForOwner,
    Full,
    /// Another client set the config of that id.
    NotYours,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps `config` (replacing one of the same id on the same task, if its owner set it or
    /// `admin`); whether the task needs a follower started (it has none yet).
    pub fn set(&self, config: Config, admin: bool) -> Result<bool, Refused> {
        let mut inner = self.lock();
        let existing =
            inner.tasks.get(&config.task_id).and_then(|entry| entry.configs.iter().position(|c| c.id == config.id));
        if let Some(idx) = existing
            && !admin
            && inner.tasks[&config.task_id].configs[idx].owner != config.owner
        {
            return Err(Refused::NotYours);
        }
        if existing.is_none() {
            if inner.tasks.get(&config.task_id).is_some_and(|entry| entry.configs.len() >= MAX_PER_TASK) {
                return Err(Refused::TooManyForTask);
            }
            let owned =
                inner.tasks.values().flat_map(|entry| &entry.configs).filter(|c| c.owner == config.owner).count();
            if owned >= MAX_PER_OWNER {
                return Err(Refused::TooManyForOwner);
            }
            while inner.n_configs >= MAX_CONFIGS {
                // The task that ended longest ago (and is no longer followed) makes room.
                let oldest = inner
                    .tasks
                    .iter()
                    .filter(|(_, entry)| !entry.following)
                    .filter_map(|(id, entry)| entry.ended.map(|ended| (ended, *id)))
                    .min();
                let Some((_, id)) = oldest else { return Err(Refused::Full) };
                if let Some(entry) = inner.tasks.remove(&id) {
                    inner.n_configs -= entry.configs.len();
                    inner.evicted.push(id);
                }
            }
        }
        let entry = inner.tasks.entry(config.task_id).or_default();
        match existing {
            Some(idx) => entry.configs[idx] = config,
            None => entry.configs.push(config),
        }
        let start = !entry.following && entry.ended.is_none();
        if start {
            entry.following = true;
        }
        if existing.is_none() {
            inner.n_configs += 1;
        }
        Ok(start)
    }

    /// Whether the caller is the one to load the configs kept in the store: true once.
    pub fn start_restoring(&self) -> bool {
        !self.restored.swap(true, std::sync::atomic::Ordering::SeqCst)
    }

    /// The tasks whose configs were dropped to make room since the last call.
    pub fn take_evicted(&self) -> Vec<TaskId> {
        std::mem::take(&mut self.lock().evicted)
    }

    pub fn get(&self, task_id: TaskId, id: &str) -> Option<Config> {
        self.lock().tasks.get(&task_id)?.configs.iter().find(|config| config.id == id).cloned()
    }

    pub fn list(&self, task_id: TaskId) -> Vec<Config> {
        self.lock().tasks.get(&task_id).map(|entry| entry.configs.clone()).unwrap_or_default()
    }

    /// Deletes the config if `owner` set it or `admin`; whether there was such a config.
    pub fn delete(&self, task_id: TaskId, id: &str, owner: &str, admin: bool) -> Result<bool, Refused> {
        let mut inner = self.lock();
        let Some(entry) = inner.tasks.get_mut(&task_id) else { return Ok(false) };
        if entry.configs.iter().any(|config| config.id == id && config.owner != owner && !admin) {
            return Err(Refused::NotYours);
        }
        let before = entry.configs.len();
        entry.configs.retain(|config| config.id != id);
        let removed = before - entry.configs.len();
        inner.n_configs -= removed;
        Ok(removed > 0)
    }

    fn webhooks(&self, task_id: TaskId) -> Vec<(String, Webhook)> {
        self.list(task_id).into_iter().map(|config| (config.id, config.webhook)).collect()
    }

    /// The task's follower has stopped: after its end, or before (a shutdown, an expired
    /// token), when a new config may start another.
    fn stopped(&self, task_id: TaskId, ended: bool) {
        let mut inner = self.lock();
        inner.n_ended += 1;
        let n_ended = inner.n_ended;
        if let Some(entry) = inner.tasks.get_mut(&task_id) {
            entry.following = false;
            if ended {
                entry.ended = Some(n_ended);
            }
        }
    }

    /// Delivers each update of `updates` (the task's stream) to the task's configs as they
    /// are when it comes, until the stream ends.
    pub async fn follow(
        &self,
        task_id: TaskId,
        mut updates: impl futures::Stream<Item = Value> + Unpin,
        shutdown: CancellationToken,
    ) {
        let mut ended = false;
        while let Some(update) = updates.next().await {
            ended = is_final(&update);
            for (id, webhook) in self.webhooks(task_id) {
                if let Err(error) = self.sender.deliver(&webhook, &update, &shutdown).await {
                    tracing::warn!(task = %task_id, config = %id, %error, "an A2A push notification was not delivered");
                }
            }
        }
        self.stopped(task_id, ended);
    }
}

/// Whether an update is the last of its task (a final state, or the task sent when it had
/// already ended).
fn is_final(update: &Value) -> bool {
    let state = update
        .get("statusUpdate")
        .or_else(|| update.get("task"))
        .and_then(|value| value.get("status"))
        .and_then(|status| status.get("state"))
        .and_then(Value::as_str);
    matches!(state, Some("TASK_STATE_COMPLETED" | "TASK_STATE_FAILED" | "TASK_STATE_CANCELED"))
}

/// The string field `name` of `params`, if set and not empty.
pub fn string(params: &Map<String, Value>, name: &str) -> Option<String> {
    params.get(name).and_then(Value::as_str).filter(|value| !value.is_empty()).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(task: i64, id: &str) -> Config {
        owned(task, id, "op")
    }

    fn owned(task: i64, id: &str, owner: &str) -> Config {
        let webhook =
            Webhook { url: "http://127.0.0.1:9/hook".parse().unwrap(), token: Some("t".into()), authorization: None };
        let caller = Caller {
            subject: owner.to_string(),
            role: baton_ops::Role::Agent,
            agent: Some("coder".into()),
            token_id: owner.to_string(),
            expires_at: Some(2_000_000_000),
        };
        let reader = Reader { caller, scope: Some("coder".into()) };
        Config { id: id.to_string(), task_id: TaskId(task), webhook, scheme: None, owner: owner.to_string(), reader }
    }

    #[test]
    fn a_task_is_followed_once_and_its_configs_are_bounded() {
        let registry = Registry::default();
        assert_eq!(registry.set(config(1, "a"), false), Ok(true));
        assert_eq!(registry.set(config(1, "b"), false), Ok(false));
        assert_eq!(registry.set(config(1, "a"), false), Ok(false), "the same id replaces");
        assert_eq!(registry.list(TaskId(1)).len(), 2);
        for n in 2..MAX_PER_TASK {
            registry.set(config(1, &n.to_string()), false).unwrap();
        }
        assert_eq!(registry.set(config(1, "over"), false), Err(Refused::TooManyForTask));
        assert_eq!(registry.delete(TaskId(1), "a", "op", false), Ok(true));
        assert_eq!(registry.delete(TaskId(1), "a", "op", false), Ok(false));
        assert!(registry.get(TaskId(1), "b").is_some());
        registry.stopped(TaskId(1), true);
        assert_eq!(registry.set(config(1, "late"), false), Ok(false), "an ended task is not followed again");
    }

    #[test]
    fn a_config_is_its_owner_s_and_an_owner_s_configs_are_bounded() {
        let registry = Registry::default();
        registry.set(owned(1, "hook", "alice"), false).unwrap();
        assert_eq!(registry.set(owned(1, "hook", "mallory"), false), Err(Refused::NotYours));
        assert_eq!(registry.delete(TaskId(1), "hook", "mallory", false), Err(Refused::NotYours));
        assert_eq!(registry.set(owned(1, "hook", "admin"), true), Ok(false), "an admin may replace it");
        assert_eq!(registry.delete(TaskId(1), "hook", "someone", true), Ok(true));
        assert!(owned(1, "x", "a").to_json(true).get("token").is_some());
        assert!(owned(1, "x", "a").to_json(false).get("token").is_none(), "another's token is not shown");
        for n in 0..MAX_PER_OWNER {
            registry.set(owned(n as i64 + 10, "h", "greedy"), false).unwrap();
        }
        assert_eq!(registry.set(owned(5, "h", "greedy"), false), Err(Refused::TooManyForOwner));
        assert_eq!(registry.set(owned(5, "h", "other"), false), Ok(true), "others still have room");
    }

    #[test]
    fn a_config_round_trips_through_its_record() {
        let mut kept = owned(3, "hook", "alice");
        kept.webhook.authorization = Some("Bearer s3cret".into());
        kept.scheme = Some("Bearer".into());
        let record = kept.to_record();
        assert_eq!((record.task, record.id.as_str(), record.owner.as_str()), (TaskId(3), "hook", "alice"));
        let back = Config::from_record(record.clone(), |url| url.parse().map_err(|_| "bad".to_string())).unwrap();
        assert_eq!(back.to_json(true), kept.to_json(true));
        assert_eq!(back.webhook.authorization.as_deref(), Some("Bearer s3cret"));
        let (caller, kept_caller) = (&back.reader.caller, &kept.reader.caller);
        assert_eq!(
            (caller.role, &caller.agent, &caller.token_id),
            (kept_caller.role, &kept_caller.agent, &kept_caller.token_id)
        );
        assert_eq!((caller.expires_at, back.reader.scope.as_deref()), (Some(2_000_000_000), Some("coder")));
        assert!(back.reader.expired(2_000_000_000) && !back.reader.expired(1_999_999_999));
        let mut earlier = record.clone();
        earlier.config.as_object_mut().unwrap().remove("reader");
        let refused = Config::from_record(earlier, |url| url.parse().map_err(|_| "bad".to_string()));
        assert!(refused.unwrap_err().contains("set it again"));
        let mut forged = record.clone();
        forged.owner = "mallory".into();
        assert!(Config::from_record(forged, |url| url.parse().map_err(|_| "bad".to_string())).is_err());
        let refused = Config::from_record(record, |_| Err("not an allowed host".to_string()));
        assert_eq!(refused.unwrap_err(), "not an allowed host");
    }

    #[test]
    fn evicted_tasks_are_told_once() {
        let registry = Registry::default();
        registry.set(config(1, "a"), false).unwrap();
        registry.stopped(TaskId(1), true);
        let mut inner = registry.lock();
        inner.n_configs = MAX_CONFIGS;
        drop(inner);
        registry.set(config(2, "b"), true).unwrap();
        assert_eq!(registry.take_evicted(), vec![TaskId(1)]);
        assert!(registry.take_evicted().is_empty());
    }

    #[test]
    fn final_updates() {
        assert!(is_final(&json!({ "statusUpdate": { "status": { "state": "TASK_STATE_COMPLETED" } } })));
        assert!(is_final(&json!({ "task": { "status": { "state": "TASK_STATE_CANCELED" } } })));
        assert!(!is_final(&json!({ "statusUpdate": { "status": { "state": "TASK_STATE_WORKING" } } })));
        assert!(!is_final(&json!({ "artifactUpdate": {} })));
    }
}
