//! `baton budget`: the token budgets of the current period (use, limits, thresholds reached,
//! the next reset), and `baton budget set` to change a limit in the running `baton run`.

use anyhow::Context as _;

use baton_core::budget::{Budgets, Limit, Scope, percent_of};
use baton_core::model::RunRecord;
use baton_core::{EventKind, Timestamp};
use baton_store::{EventQuery, Store};

use super::{find_run, open_existing_store};
use crate::output;
use crate::{BudgetAction, Cli, Failure};

/// The budgets of a run as they stand at `now`, from its stored usage.
async fn budgets(
    store: &dyn Store,
    plan: &baton_core::config::Plan,
    run: &RunRecord,
    now: Timestamp,
) -> Result<Budgets, Failure> {
    let since = plan.budget.schedule().period_start(now);
    let usage = store.usage(&run.id, since).await.context("reading budget usage")?;
    Ok(Budgets::new(plan.budget.clone(), &usage, now))
}

/// The budgets that are exhausted now (`global`, `workstream:NAME`, `agent:NAME`).
pub(super) async fn exhausted(store: &dyn Store, plan: &baton_core::config::Plan, run: &RunRecord) -> Vec<String> {
    let now = baton_runtime::Clock::system().now();
    let Ok(budgets) = budgets(store, plan, run, now).await else { return Vec::new() };
    budgets
        .scopes()
        .into_iter()
        .filter(|scope| !matches!(scope, Scope::Task(_)) && budgets.exhausted(scope))
        .map(|scope| scope.to_string())
        .collect()
}

/// One line for `baton status` when a budget holds work back, naming it and the reset.
pub(super) async fn status_line(store: &dyn Store, plan: &baton_core::config::Plan, run: &RunRecord) -> Option<String> {
    let exhausted = exhausted(store, plan, run).await;
    if exhausted.is_empty() {
        return None;
    }
    let now = baton_runtime::Clock::system().now();
    let schedule = plan.budget.schedule();
    let until = schedule.next_after(now).map(|at| schedule.show(at)).unwrap_or_else(|| "never".into());
    Some(format!(
        "exhausted: {} — the agents they cover get no new task (blocked-budget) until the reset at {until} or `baton budget set`",
        exhausted.join(", ")
    ))
}

pub(super) async fn budget(
    cli: &Cli,
    action: Option<&BudgetAction>,
    json: bool,
    run: Option<&str>,
) -> Result<u8, Failure> {
    let (loaded, store) = open_existing_store(cli)?;
    if let Some(BudgetAction::Set { scope, daily_tokens, cost_usd, run }) = action {
        let parsed: Scope = scope.parse().map_err(Failure::usage)?;
        let known = match &parsed {
            Scope::Workstream(name) => loaded.plan.workstream(name).is_some(),
            Scope::Agent(name) => loaded.plan.agent(name).is_some(),
            _ => true,
        };
        if !known {
            return Err(Failure::usage(format!(
                "no {} `{}` in {}",
                parsed.kind(),
                parsed.name(),
                cli.config.display()
            )));
        }
        if daily_tokens.is_none() && cost_usd.is_none() {
            return Err(Failure::usage("give the new limit: --daily-tokens N and/or --cost-usd X"));
        }
        if daily_tokens == &Some(0) || cost_usd.is_some_and(|cost| !(cost.is_finite() && cost > 0.0)) {
            return Err(Failure::usage("a limit must be more than 0"));
        }
        let (_, client) = super::source::front_door(cli, run.as_deref()).await?;
        client.set_budget(&parsed.to_string(), *daily_tokens, *cost_usd).await?;
        let limit = Limit { daily_tokens: *daily_tokens, cost_usd: *cost_usd };
        outln!("budget {parsed}: the limit is {limit} until the next reset");
        return Ok(0);
    }
    let run = find_run(&*store, &loaded.plan, run).await?;
    let now = baton_runtime::Clock::system().now();
    let budgets = budgets(&*store, &loaded.plan, &run, now).await?;
    let schedule = budgets.schedule();
    let spec = budgets.spec();
    let next_reset = budgets.next_reset();
    let waiting = waiting_tasks(&*store, &run, budgets.period_start()).await?;
    let scopes = budgets.scopes();
    let crossed = |scope: &Scope| -> Vec<u8> {
        let reached = budgets.reported(scope).unwrap_or(0);
        spec.thresholds.iter().copied().chain([100]).filter(|level| *level <= reached).collect()
    };
    if json {
        let rows: Vec<serde_json::Value> = scopes
            .iter()
            .map(|scope| {
                let used = budgets.used(scope);
                let limit = budgets.limit(scope);
                serde_json::json!({
                    "scope": scope.to_string(),
                    "kind": scope.kind(),
                    "name": scope.name(),
                    "used_tokens": used.tokens,
                    "used_cost_usd": used.cost_usd,
                    "limit_tokens": limit.daily_tokens,
                    "limit_cost_usd": limit.cost_usd,
                    "percent": budgets.percent(scope),
                    "thresholds_crossed": crossed(scope),
                    "exhausted": budgets.exhausted(scope),
                })
            })
            .collect();
        let value = serde_json::json!({
            "run_id": run.id,
            "period_start": budgets.period_start(),
            "next_reset": next_reset,
            "next_reset_local": next_reset.map(|at| schedule.show(at)),
            "reset": spec.reset,
            "timezone": spec.timezone,
            "thresholds": spec.thresholds,
            "scopes": rows,
            "waiting_tasks": waiting,
        });
        outln!("{}", serde_json::to_string_pretty(&value).context("serializing")?);
        return Ok(0);
    }
    outln!("run          {} ({})", run.id, run.name);
    outln!(
        "period       since {}; next reset {} (reset = \"{}\", timezone = \"{}\")",
        schedule.show(budgets.period_start()),
        next_reset.map(|at| schedule.show(at)).unwrap_or_else(|| "never".into()),
        spec.reset,
        spec.timezone
    );
    let thresholds: Vec<String> = spec.thresholds.iter().map(|t| format!("{t}%")).collect();
    outln!("thresholds   {}, 100%", thresholds.join(", "));
    let mut table = output::table(&["scope", "tokens", "limit", "used", "cost", "thresholds", "state"]);
    for scope in scopes.iter().filter(|scope| !matches!(scope, Scope::Task(_))) {
        let used = budgets.used(scope);
        let limit = budgets.limit(scope);
        let percent = percent_of(used, limit);
        let state = if budgets.exhausted(scope) {
            "exhausted"
        } else if limit.is_set() {
            "ok"
        } else {
            "no limit"
        };
        let crossed: Vec<String> = crossed(scope).iter().map(|t| format!("{t}%")).collect();
        table.add_row(vec![
            scope.to_string(),
            used.tokens.to_string(),
            show_limit(limit),
            percent.map(|p| format!("{p:.0}%")).unwrap_or_else(|| "-".into()),
            format!("${:.4}", used.cost_usd),
            if crossed.is_empty() { "-".into() } else { crossed.join(", ") },
            state.to_string(),
        ]);
    }
    outln!("{table}");
    if !waiting.is_empty() {
        outln!("waiting for budget:");
        for (task, reason) in &waiting {
            outln!("  task {task}: {reason}");
        }
    }
    if scopes.is_empty() {
        outln!("no usage reported yet this period and no limit set; add [budget] daily_tokens to baton.toml");
    }
    Ok(0)
}

fn show_limit(limit: Limit) -> String {
    if limit.is_set() { limit.to_string() } else { "-".into() }
}

/// Tasks that said this period that a budget holds them back and are still ready: (task,
/// reason).
async fn waiting_tasks(store: &dyn Store, run: &RunRecord, since: Timestamp) -> Result<Vec<(String, String)>, Failure> {
    let events = store
        .events(&EventQuery { run_id: Some(run.id.clone()), ..Default::default() })
        .await
        .context("reading events")?;
    let mut waiting: std::collections::BTreeMap<i64, (String, String)> = std::collections::BTreeMap::new();
    for event in events.iter().filter(|event| event.at >= since) {
        if let EventKind::TaskBudgetWait { task, scope, reason } = &event.kind {
            waiting.insert(task.0, (task.to_string(), format!("{scope}: {reason}")));
        }
    }
    let mut still = Vec::new();
    for (id, row) in waiting {
        let task = store.task(baton_core::TaskId(id)).await.context("reading a task")?;
        if task.is_some_and(|task| task.state == baton_core::TaskState::Ready) {
            still.push(row);
        }
    }
    Ok(still)
}
