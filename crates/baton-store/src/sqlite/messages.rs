//! Storing agent messages: the queue of sends waiting for the writer, the inbox-full check,
//! and settling deliveries.

use std::collections::HashSet;

use rusqlite::{OptionalExtension, params};
use tokio::sync::oneshot;

use baton_core::{EventKind, Timestamp};

use super::rows::to_json;
use super::writer::{InboxCounts, WriteCtx};
use crate::{Error, Result};
use baton_core::messages::{INBOX_LIMIT, NewMessage, Recipient};

/// Where the sender of a queued message hears whether it was stored, and its delivery ids.
pub(super) type SendReply = oneshot::Sender<Result<Vec<i64>>>;

/// A message waiting for the writer, with the sender waiting for its answer.
pub(super) struct QueuedSend {
    pub(super) run_id: String,
    pub(super) message_id: String,
    pub(super) message: NewMessage,
    pub(super) recipients: Vec<String>,
    pub(super) now: Timestamp,
    pub(super) reply: SendReply,
}

/// The refusal of a message whose recipients' inboxes cannot take it, if any. Every inbox is
/// checked before anything is written, so a refused message needs no savepoint of its own.
pub(super) fn full_inbox(inbox: &InboxCounts, run_id: &str, recipients: &[String]) -> Option<Error> {
    for (idx, recipient) in recipients.iter().enumerate() {
        // A recipient named twice gets two deliveries.
        let earlier = recipients[..idx].iter().filter(|other| *other == recipient).count() as u64;
        if inbox.get(run_id, recipient) + earlier >= INBOX_LIMIT {
            return Some(Error::Full(format!(
                "the inbox of {recipient} is full ({INBOX_LIMIT} messages not yet acknowledged); try again later"
            )));
        }
    }
    None
}

/// Stores one message for its recipients (whose inboxes have room) with its `MessageSent` event.
pub(super) fn insert_message(
    ctx: &mut WriteCtx<'_>,
    run_id: &str,
    message_id: String,
    message: NewMessage,
    recipients: Vec<String>,
    now: Timestamp,
) -> Result<Vec<i64>> {
    let topic = match &message.to {
        Recipient::Topic(topic) => Some(topic.clone()),
        _ => None,
    };
    let data = to_json(&message.data);
    let mut ids = Vec::with_capacity(recipients.len());
    {
        let mut insert = ctx.tx.prepare_cached(
            "INSERT INTO deliveries (run_id, message_id, sender, recipient, topic, body, data, task_id, \
             correlation_id, state, attempts, next_attempt_at, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'pending', 0, ?10, ?10)",
        )?;
        for recipient in &recipients {
            insert.execute(params![
                run_id,
                message_id,
                message.from,
                recipient,
                topic,
                message.body,
                data,
                message.task.map(|task| task.0),
                message.correlation_id,
                now.0,
            ])?;
            ids.push(ctx.tx.last_insert_rowid());
        }
    }
    for recipient in &recipients {
        ctx.inbox.add(run_id, recipient, 1);
    }
    ctx.event(
        run_id,
        now,
        EventKind::MessageSent { message: message_id, from: message.from, to: recipients, body: message.body },
    )?;
    Ok(ids)
}

/// Acknowledges or dead-letters a delivery. Only a pending delivery leaves its recipient's
/// inbox; settling one that was settled already rewrites it as before, without counting it twice.
/// Acknowledges deliveries in one statement (the ids go in as one JSON array); those that
/// were no longer pending (settled twice) are updated one by one as [`settle_final`] does.
pub(super) fn settle_acked(ctx: &mut WriteCtx<'_>, ids: &[i64], now: Timestamp) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let id_list = serde_json::to_string(ids).map_err(|error| Error::corrupt(error.to_string()))?;
    let mut left_inbox: Vec<(i64, String, String)> = Vec::with_capacity(ids.len());
    {
        let mut stmt = ctx.tx.prepare_cached(
            "UPDATE deliveries SET state = 'acked', attempts = attempts + 1, acked_at = ?2 \
             WHERE id IN (SELECT value FROM json_each(?1)) AND state = 'pending' RETURNING id, run_id, recipient",
        )?;
        let rows = stmt.query_map(params![id_list, now.0], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
        for row in rows {
            left_inbox.push(row?);
        }
    }
    for (_, run_id, recipient) in &left_inbox {
        ctx.inbox.add(run_id, recipient, -1);
    }
    if left_inbox.len() < ids.len() {
        let settled: HashSet<i64> = left_inbox.iter().map(|(id, _, _)| *id).collect();
        for id in ids.iter().filter(|id| !settled.contains(id)) {
            settle_final(ctx, *id, "acked", None, now)?;
        }
    }
    Ok(())
}

pub(super) fn settle_final(
    ctx: &mut WriteCtx<'_>,
    id: i64,
    state: &str,
    error: Option<&str>,
    now: Timestamp,
) -> Result<()> {
    let acked_at = (state == "acked").then_some(now.0);
    let left_inbox: Option<(String, String)> = ctx
        .tx
        .prepare_cached(
            "UPDATE deliveries SET state = ?2, attempts = attempts + 1, error = coalesce(?3, error), \
             acked_at = coalesce(?4, acked_at) WHERE id = ?1 AND state = 'pending' RETURNING run_id, recipient",
        )?
        .query_row(params![id, state, error, acked_at], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    match left_inbox {
        Some((run_id, recipient)) => ctx.inbox.add(&run_id, &recipient, -1),
        None => {
            ctx.tx
                .prepare_cached(
                    "UPDATE deliveries SET state = ?2, attempts = attempts + 1, error = coalesce(?3, error), \
                     acked_at = coalesce(?4, acked_at) WHERE id = ?1",
                )?
                .execute(params![id, state, error, acked_at])?;
        }
    }
    Ok(())
}
