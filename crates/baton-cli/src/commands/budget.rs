//! `baton budget`: the token budgets of the current period (use, limits, thresholds reached,
//! the next reset), and `baton budget set` to change a limit in the running `baton run`.

use anyhow::Context as _;

use baton_core::Timestamp;
use baton_core::budget::{Limit, Reset, Scope};
use baton_ops::schedules::BudgetView;

use super::load;
use super::source::Source;
use crate::output;
use crate::{BudgetAction, Cli, Failure};

pub(super) async fn budget(
    cli: &Cli,
    action: Option<&BudgetAction>,
    json: bool,
    run: Option<&str>,
) -> Result<u8, Failure> {
    if let Some(BudgetAction::Set { scope, daily_tokens, cost_usd, run }) = action {
        let loaded = load(cli)?;
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
        let client = super::source::front_door(cli, run.as_deref()).await?;
        client.set_budget(&parsed.to_string(), *daily_tokens, *cost_usd).await?;
        let limit = Limit { daily_tokens: *daily_tokens, cost_usd: *cost_usd };
        outln!("budget {parsed}: the limit is {limit} until the next reset");
        return Ok(0);
    }
    let source = Source::open(cli, run).await?;
    let reader = source.reader();
    let status = reader.status().await?;
    let budgets = reader.budgets().await?;
    // Times are shown in the budget's zone.
    let reset = Reset::parse(&budgets.reset, &budgets.timezone).ok();
    let show = |at: i64| match &reset {
        Some(reset) => reset.show(Timestamp(at)),
        None => output::time(Timestamp(at)),
    };
    let next_reset_local = budgets.next_reset.map(show);
    let waiting: Vec<(String, String)> =
        budgets.waiting_tasks.iter().map(|wait| (wait.task.to_string(), wait.reason.clone())).collect();
    if json {
        let value = serde_json::json!({
            "run_id": status.session_id,
            "period_start": budgets.period_start,
            "next_reset": budgets.next_reset,
            "next_reset_local": next_reset_local,
            "reset": budgets.reset,
            "timezone": budgets.timezone,
            "thresholds": budgets.thresholds,
            "scopes": budgets.scopes,
            "waiting_tasks": waiting,
        });
        outln!("{}", serde_json::to_string_pretty(&value).context("serializing")?);
        return Ok(0);
    }
    outln!("run          {} ({})", status.session_id, status.name);
    outln!(
        "period       since {}; next reset {} (reset = \"{}\", timezone = \"{}\")",
        show(budgets.period_start),
        next_reset_local.unwrap_or_else(|| "never".into()),
        budgets.reset,
        budgets.timezone
    );
    let thresholds: Vec<String> = budgets.thresholds.iter().map(|t| format!("{t}%")).collect();
    outln!("thresholds   {}, 100%", thresholds.join(", "));
    let mut table = output::table(&["scope", "tokens", "limit", "used", "cost", "thresholds", "state"]);
    let shown: Vec<&BudgetView> = budgets.scopes.iter().filter(|view| view.kind != "task").collect();
    for view in &shown {
        let limit = Limit { daily_tokens: view.limit_tokens, cost_usd: view.limit_cost_usd };
        let state = if view.exhausted {
            "exhausted"
        } else if limit.is_set() {
            "ok"
        } else {
            "no limit"
        };
        let crossed: Vec<String> = view.thresholds_crossed.iter().map(|t| format!("{t}%")).collect();
        table.add_row(vec![
            view.scope.clone(),
            view.used_tokens.to_string(),
            show_limit(limit),
            view.percent.map(|p| format!("{p:.0}%")).unwrap_or_else(|| "-".into()),
            format!("${:.4}", view.used_cost_usd),
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
    let idle = |view: &&BudgetView| {
        view.used_tokens == 0
            && view.used_cost_usd == 0.0
            && view.limit_tokens.is_none()
            && view.limit_cost_usd.is_none()
    };
    if budgets.scopes.iter().all(|view| idle(&view)) {
        outln!("no usage reported yet this period and no limit set; add [budget] daily_tokens to baton.toml");
    }
    Ok(0)
}

fn show_limit(limit: Limit) -> String {
    if limit.is_set() { limit.to_string() } else { "-".into() }
}
