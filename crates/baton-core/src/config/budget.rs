//! `[budget]`, the `budget` key of workstreams and agents and the tasks' `estimated_tokens`:
//! parsed with the rest of the file, validated into a [`BudgetSpec`].

use serde::Deserialize;
use toml::Spanned;

use super::{RawConfig, Validator};
use crate::budget::{BudgetSpec, DEFAULT_RESET, DEFAULT_THRESHOLDS, DEFAULT_TIMEZONE, Limit, Reset};
use crate::model::NewTask;

/// `[budget]`: the global limit per period, the thresholds and the reset schedule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBudget {
    daily_tokens: Option<Spanned<u64>>,
    cost_usd: Option<Spanned<f64>>,
    thresholds: Option<Spanned<Vec<Spanned<i64>>>>,
    reset: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
}

/// `budget = { daily_tokens = …, cost_usd = … }` of a workstream or an agent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimit {
    daily_tokens: Option<Spanned<u64>>,
    cost_usd: Option<Spanned<f64>>,
}

impl Validator<'_> {
    fn limit(&mut self, daily_tokens: Option<&Spanned<u64>>, cost_usd: Option<&Spanned<f64>>) -> Limit {
        if let Some(tokens) = daily_tokens
            && *tokens.get_ref() == 0
        {
            self.error(tokens.span(), "`daily_tokens` must be at least 1");
        }
        if let Some(cost) = cost_usd
            && !(cost.get_ref().is_finite() && *cost.get_ref() > 0.0)
        {
            self.error(cost.span(), "`cost_usd` must be more than 0, e.g. 5.0");
        }
        Limit {
            daily_tokens: daily_tokens.map(|tokens| *tokens.get_ref()),
            cost_usd: cost_usd.map(|cost| *cost.get_ref()),
        }
    }

    fn scope_limit(&mut self, raw: &Spanned<RawLimit>) -> Limit {
        let limit = self.limit(raw.get_ref().daily_tokens.as_ref(), raw.get_ref().cost_usd.as_ref());
        if !limit.is_set() {
            self.error(raw.span(), "`budget` needs `daily_tokens` or `cost_usd`, e.g. { daily_tokens = 100000 }");
        }
        limit
    }

    pub(super) fn budget(&mut self, raw: &RawConfig, tasks: &[NewTask]) -> BudgetSpec {
        let mut spec = BudgetSpec::default();
        if let Some(budget) = &raw.budget {
            spec.global = self.limit(budget.daily_tokens.as_ref(), budget.cost_usd.as_ref());
            if let Some(thresholds) = &budget.thresholds {
                let mut percents = Vec::with_capacity(thresholds.get_ref().len());
                for threshold in thresholds.get_ref() {
                    match u8::try_from(*threshold.get_ref()) {
                        Ok(percent) if (1..=99).contains(&percent) => percents.push(percent),
                        _ => self.error(
                            threshold.span(),
                            format!(
                                "threshold {} is not a percentage between 1 and 99 (100 % always counts), e.g. [50, 75, 90]",
                                threshold.get_ref()
                            ),
                        ),
                    }
                }
                percents.sort_unstable();
                percents.dedup();
                spec.thresholds = percents;
            } else {
                spec.thresholds = DEFAULT_THRESHOLDS.to_vec();
            }
            let reset = budget.reset.as_ref().map_or(DEFAULT_RESET.to_string(), |reset| reset.get_ref().clone());
            let timezone =
                budget.timezone.as_ref().map_or(DEFAULT_TIMEZONE.to_string(), |timezone| timezone.get_ref().clone());
            if let Err(message) = Reset::parse(&reset, DEFAULT_TIMEZONE)
                && let Some(value) = &budget.reset
            {
                self.error(value.span(), format!("`reset`: {message}"));
            }
            if let Err(message) = Reset::parse(DEFAULT_RESET, &timezone)
                && let Some(value) = &budget.timezone
            {
                self.error(value.span(), format!("`timezone`: {message}"));
            }
            spec.reset = reset;
            spec.timezone = timezone;
        }
        for ws in &raw.workstreams {
            if let Some(budget) = &ws.budget {
                let limit = self.scope_limit(budget);
                spec.workstreams.insert(ws.name.get_ref().clone(), limit);
            }
        }
        for agent in raw.agents.iter().map(Spanned::get_ref) {
            if let Some(budget) = &agent.budget {
                let limit = self.scope_limit(budget);
                spec.agents.insert(agent.name.get_ref().clone(), limit);
            }
        }
        // A task (or a schedule's template) that needs more than a whole period's budget
        // could never start.
        let templates =
            raw.schedules.iter().map(|schedule| (schedule.task.get_ref(), format!("{}@…", schedule.name.get_ref())));
        let declared = raw.tasks.iter().zip(tasks).filter_map(|(raw_task, task)| Some((raw_task, task.key.clone()?)));
        for (raw_task, key) in declared.chain(templates) {
            let Some(estimate) = &raw_task.estimated_tokens else { continue };
            let workstream = raw_task.workstream.as_ref().map(|ws| ws.get_ref().as_str());
            if let Some(problem) = spec.never_fits(workstream, *estimate.get_ref()) {
                self.error(estimate.span(), format!("task `{key}`: {problem}"));
            }
        }
        spec
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::budget::{Limit, Scope};
    use crate::config::load;

    const PLAN: &str = r#"
[orchestration]
name = "demo"

[budget]
daily_tokens = 100000
cost_usd = 5.0
thresholds = [90, 50]
reset = "0 6 * * *"
timezone = "Europe/Paris"

[[workstreams]]
name = "build"
budget = { daily_tokens = 20000 }

[[agents]]
name = "coder"
command = ["true"]
budget = { cost_usd = 1.5 }

[[tasks]]
key = "compile"
title = "Compile"
workstream = "build"
estimated_tokens = 5000
"#;

    fn errors(text: &str) -> String {
        load("baton.toml", text, &BTreeMap::new()).unwrap_err().to_string()
    }

    #[test]
    fn budgets_are_read_with_their_scopes_and_estimates() {
        let plan = load("baton.toml", PLAN, &BTreeMap::new()).unwrap();
        let budget = &plan.budget;
        assert_eq!(budget.global, Limit { daily_tokens: Some(100_000), cost_usd: Some(5.0) });
        assert_eq!(budget.thresholds, vec![50, 90], "sorted");
        assert_eq!((budget.reset.as_str(), budget.timezone.as_str()), ("0 6 * * *", "Europe/Paris"));
        assert_eq!(budget.limit(&Scope::Workstream("build".into())).daily_tokens, Some(20_000));
        assert_eq!(budget.limit(&Scope::Agent("coder".into())).cost_usd, Some(1.5));
        assert_eq!(plan.tasks[0].estimated_tokens, Some(5000));
        let plain = load("baton.toml", "[orchestration]\nname = \"x\"\n", &BTreeMap::new()).unwrap();
        assert_eq!(plain.budget.thresholds, vec![50, 75, 90]);
        assert_eq!(plain.budget.reset, "0 0 * * *");
        assert!(!plain.budget.global.is_set());
        assert!(!plain.describe().contains("budget:"));
        assert!(
            plan.describe().contains(
                "budget: global 100000 tokens, $5.00, 2 workstream/agent budget(s); thresholds 50%, 90%; resets at \"0 6 * * *\" in Europe/Paris\n"
            ),
            "{}",
            plan.describe()
        );
    }

    #[test]
    fn bad_budgets_name_the_place() {
        assert_eq!(
            errors(&PLAN.replace("reset = \"0 6 * * *\"", "reset = \"0 6 * *\"")),
            "baton.toml:9:9: `reset`: invalid cron expression `0 6 * *` (Invalid pattern: Pattern must have between 5 and 7 fields.); e.g. \"0 0 * * *\" for midnight"
                .replace("(Invalid pattern: Pattern must have between 5 and 7 fields.)", &cron_error("0 6 * *"))
        );
        assert_eq!(
            errors(&PLAN.replace("Europe/Paris", "Europe/Pariss")),
            "baton.toml:10:12: `timezone`: unknown time zone `Europe/Pariss`; use an IANA name such as \"UTC\" or \"Europe/Paris\""
        );
        assert_eq!(
            errors(&PLAN.replace("[90, 50]", "[50, 150]")),
            "baton.toml:8:19: threshold 150 is not a percentage between 1 and 99 (100 % always counts), e.g. [50, 75, 90]"
        );
        assert_eq!(
            errors(&PLAN.replace("budget = { daily_tokens = 20000 }", "budget = {}")),
            "baton.toml:14:10: `budget` needs `daily_tokens` or `cost_usd`, e.g. { daily_tokens = 100000 }"
        );
        assert_eq!(
            errors(&PLAN.replace("daily_tokens = 100000", "daily_tokens = 0")),
            "baton.toml:6:16: `daily_tokens` must be at least 1"
        );
        assert_eq!(
            errors(&PLAN.replace("estimated_tokens = 5000", "estimated_tokens = 25000")),
            "baton.toml:25:20: task `compile`: it estimates 25000 tokens, more than workstream `build`'s daily_tokens (20000): it could never start"
        );
        assert_eq!(
            errors(&PLAN.replace("estimated_tokens = 5000", "estimated_tokens = 0")),
            "baton.toml:25:20: `estimated_tokens` must be at least 1"
        );
        // A schedule's template is checked the same way, and keeps its estimate for each firing.
        let scheduled = format!(
            "{PLAN}\n[[schedules]]\nname = \"nightly\"\ncron = \"0 2 * * *\"\ntask = {{ title = \"Nightly\", estimated_tokens = 7000 }}\n"
        );
        let plan = load("baton.toml", &scheduled, &BTreeMap::new()).unwrap();
        assert_eq!(plan.schedules[0].task.estimated_tokens, Some(7000));
        assert_eq!(
            errors(&scheduled.replace("estimated_tokens = 7000", "estimated_tokens = 200000")),
            "baton.toml:30:48: task `nightly@…`: it estimates 200000 tokens, more than the global daily_tokens (100000): it could never start"
        );
        let message = errors(&PLAN.replace("budget = { cost_usd = 1.5 }", "budget = { tokens = 1 }"));
        assert!(
            message.starts_with("baton.toml:19:12: unknown field `tokens`, expected `daily_tokens` or `cost_usd`"),
            "{message}"
        );
    }

    fn cron_error(expression: &str) -> String {
        let message = crate::budget::Reset::parse(expression, "UTC").unwrap_err();
        let start = message.find('(').unwrap();
        let end = message.rfind(')').unwrap();
        message[start..=end].to_string()
    }
}
