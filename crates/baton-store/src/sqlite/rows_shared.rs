//! The column lists both backends select, in the order their row readers expect: the tables
//! are the same on SQLite and PostgreSQL.

pub(crate) const TASK_COLUMNS: &str = "id, run_id, key, workstream, title, description, input, requires, agent, depends_on, \
     priority, max_attempts, timeout_ms, resources, state, attempt, assigned_agent, lease_owner, lease_expires_at, \
     not_before, result, error, created_at, updated_at, finished_at, estimated_tokens, parent";

pub(crate) const RUN_COLUMNS: &str =
    "id, name, state, phase, n_phases, n_tasks, n_finished, started_at, ended_at, error, owner, owner_pid, owner_until";

pub(crate) const DELIVERY_COLUMNS: &str = "id, message_id, sender, recipient, topic, body, data, task_id, correlation_id, state, \
     attempts, next_attempt_at, created_at, error, acked_at";
