//! Token budgets: limits on the tokens (and optionally the cost) that agents use per period,
//! and the arithmetic behind them.
//!
//! - A **period** starts at the latest firing of a cron schedule (`reset`, default midnight) in
//!   a time zone (`timezone`, default UTC) at or before `now`, and ends at the next one.
//! - Usage is accounted per **scope** and period: the whole run (`global`), each workstream,
//!   each agent and each task. A report counts towards the global total, its agent's, its
//!   workstream's (the task's, or the agent's own) and its task's.
//! - A scope with a limit crosses its **thresholds** (default 50, 75 and 90 % of the limit,
//!   and always 100 %) once per period each; at 100 % it is **exhausted**: the agents it covers
//!   get no new task until the next period, or until an operator raises the limit (for the
//!   current period).
//!
//! No IO: the current time is a parameter, like everywhere in the core.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::TimeZone as _;
use serde::{Deserialize, Serialize};

use crate::model::TaskId;
use crate::time::Timestamp;

/// The thresholds used when `[budget] thresholds` is not set, in percent.
pub const DEFAULT_THRESHOLDS: [u8; 3] = [50, 75, 90];
/// Budgets reset at midnight unless `[budget] reset` says otherwise.
pub const DEFAULT_RESET: &str = "0 0 * * *";
pub const DEFAULT_TIMEZONE: &str = "UTC";

/// A limit per period: tokens, cost in US dollars, or both (whichever is reached first).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Limit {
    pub daily_tokens: Option<u64>,
    pub cost_usd: Option<f64>,
}

impl Limit {
    pub fn is_set(&self) -> bool {
        self.daily_tokens.is_some() || self.cost_usd.is_some()
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.daily_tokens, self.cost_usd) {
            (Some(tokens), Some(cost)) => write!(f, "{tokens} tokens, ${cost:.2}"),
            (Some(tokens), None) => write!(f, "{tokens} tokens"),
            (None, Some(cost)) => write!(f, "${cost:.2}"),
            (None, None) => f.write_str("no limit"),
        }
    }
}

/// The `[budget]` configuration, with the per-workstream and per-agent `budget` keys and the
/// tasks' `estimated_tokens` checked against them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetSpec {
    pub global: Limit,
    pub workstreams: BTreeMap<String, Limit>,
    pub agents: BTreeMap<String, Limit>,
    /// Ascending percentages below 100; 100 % is always a threshold.
    pub thresholds: Vec<u8>,
    /// A cron expression (5 fields, or 6 with seconds).
    pub reset: String,
    /// An IANA time zone name, e.g. `Europe/Paris`.
    pub timezone: String,
}

impl Default for BudgetSpec {
    fn default() -> Self {
        BudgetSpec {
            global: Limit::default(),
            workstreams: BTreeMap::new(),
            agents: BTreeMap::new(),
            thresholds: DEFAULT_THRESHOLDS.to_vec(),
            reset: DEFAULT_RESET.to_string(),
            timezone: DEFAULT_TIMEZONE.to_string(),
        }
    }
}

impl BudgetSpec {
    /// The configured limit of a scope (tasks have none).
    pub fn limit(&self, scope: &Scope) -> Limit {
        match scope {
            Scope::Global => self.global,
            Scope::Workstream(name) => self.workstreams.get(name).copied().unwrap_or_default(),
            Scope::Agent(name) => self.agents.get(name).copied().unwrap_or_default(),
            Scope::Task(_) => Limit::default(),
        }
    }

    /// The reset schedule. Validated with the configuration, so it parses; the default
    /// (midnight UTC) stands in otherwise.
    /// Why a task of `workstream` estimated at `tokens` could never start under the limits
    /// configured, if it could not: more than a whole period's budget.
    pub fn never_fits(&self, workstream: Option<&str>, tokens: u64) -> Option<String> {
        never_fits(|scope| self.limit(scope), workstream, tokens)
    }

    pub fn schedule(&self) -> Reset {
        Reset::parse(&self.reset, &self.timezone)
            .or_else(|_| Reset::parse(DEFAULT_RESET, DEFAULT_TIMEZONE))
            .expect("the default reset schedule parses")
    }
}

/// What usage is accounted to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Scope {
    Global,
    Workstream(String),
    Agent(String),
    Task(TaskId),
}

impl Scope {
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::Workstream(_) => "workstream",
            Scope::Agent(_) => "agent",
            Scope::Task(_) => "task",
        }
    }

    /// The name within its kind: empty for `global`, the id for a task.
    pub fn name(&self) -> String {
        match self {
            Scope::Global => String::new(),
            Scope::Workstream(name) | Scope::Agent(name) => name.clone(),
            Scope::Task(id) => id.to_string(),
        }
    }

    pub fn from_parts(kind: &str, name: &str) -> Option<Scope> {
        match kind {
            "global" => Some(Scope::Global),
            "workstream" => Some(Scope::Workstream(name.to_string())),
            "agent" => Some(Scope::Agent(name.to_string())),
            "task" => name.parse().ok().map(|id| Scope::Task(TaskId(id))),
            _ => None,
        }
    }
}

/// `global`, `workstream:NAME`, `agent:NAME`, `task:ID`: how scopes are shown and named on the
/// command line.
impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Global => f.write_str("global"),
            other => write!(f, "{}:{}", other.kind(), other.name()),
        }
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (kind, name) = text.split_once(':').unwrap_or((text, ""));
        let scope = match (kind, name.is_empty()) {
            ("global", true) => Some(Scope::Global),
            ("workstream" | "agent", false) => Scope::from_parts(kind, name),
            _ => None,
        };
        scope.ok_or_else(|| format!("unknown budget scope `{text}`; write global, workstream:NAME or agent:NAME"))
    }
}

/// Tokens and cost used.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Spent {
    pub tokens: u64,
    pub cost_usd: f64,
}

impl Spent {
    /// Saturating: totals stop at the largest value rather than wrap or become infinite (which
    /// JSON cannot carry).
    pub fn add(&mut self, other: Spent) {
        self.tokens = self.tokens.saturating_add(other.tokens);
        let cost_usd = self.cost_usd + other.cost_usd;
        self.cost_usd = if cost_usd.is_nan() { self.cost_usd } else { cost_usd.min(f64::MAX) };
    }
}

/// The most tokens one report may count (input, output and cache tokens together): a million
/// million, far beyond any real call, and far below what the store's 64-bit totals hold, so
/// that no report can overflow them. A larger report is refused, not clamped.
pub const MAX_REPORTED_TOKENS: u64 = 1_000_000_000_000;
/// The largest cost one report may count, in US dollars.
pub const MAX_REPORTED_COST_USD: f64 = 1_000_000.0;

/// Why a usage report was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UsageError {
    #[error("`{field}` must be a whole number of tokens from 0 to {MAX_REPORTED_TOKENS}, not {value}")]
    NotACount { field: &'static str, value: String },
    #[error("the report counts {tokens} tokens, more than the {MAX_REPORTED_TOKENS} one report may count")]
    TooManyTokens { tokens: u64 },
    #[error("`{field}` must be a cost in US dollars from 0 to {MAX_REPORTED_COST_USD}, not {value}")]
    NotACost { field: &'static str, value: String },
}

/// One report of usage, in the shape CLI agents print (`claude -p --output-format json`):
/// `input_tokens`, `output_tokens`, `cache_creation_input_tokens`, `cache_read_input_tokens`,
/// and the cost as `total_cost_usd` (or `cost_usd`).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cost_usd: f64,
}

/// The token counts a report may name.
const COUNT_FIELDS: [&str; 4] =
    ["input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"];

impl Usage {
    /// Every token counts against a budget: input, output and both kinds of cache tokens.
    pub fn tokens(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.output_tokens)
            .saturating_add(self.cache_creation_input_tokens)
            .saturating_add(self.cache_read_input_tokens)
    }

    pub fn spent(&self) -> Spent {
        Spent { tokens: self.tokens(), cost_usd: self.cost_usd }
    }

    /// Usage with the token counts at the top level (the protocol's `usage/report` params, or
    /// a result's `usage` object). `Ok(None)` when it names no tokens and no cost; an error
    /// when a count is not a whole number, or the report counts more than
    /// [`MAX_REPORTED_TOKENS`] or [`MAX_REPORTED_COST_USD`].
    pub fn from_report(value: &serde_json::Value) -> Result<Option<Usage>, UsageError> {
        let mut counts = [None; 4];
        for (count, field) in counts.iter_mut().zip(COUNT_FIELDS) {
            *count = match value.get(field) {
                None | Some(serde_json::Value::Null) => None,
                Some(found) => match found.as_u64().filter(|tokens| *tokens <= MAX_REPORTED_TOKENS) {
                    Some(tokens) => Some(tokens),
                    None => return Err(UsageError::NotACount { field, value: found.to_string() }),
                },
            };
        }
        let cost = cost_field(value, "total_cost_usd")?.or(cost_field(value, "cost_usd")?);
        if counts.iter().all(Option::is_none) && cost.is_none() {
            return Ok(None);
        }
        let usage = Usage {
            input_tokens: counts[0].unwrap_or(0),
            output_tokens: counts[1].unwrap_or(0),
            cache_creation_input_tokens: counts[2].unwrap_or(0),
            cache_read_input_tokens: counts[3].unwrap_or(0),
            cost_usd: cost.unwrap_or(0.0),
        };
        if usage.tokens() > MAX_REPORTED_TOKENS {
            return Err(UsageError::TooManyTokens { tokens: usage.tokens() });
        }
        Ok(Some(usage))
    }

    /// The usage in a task's result: its `usage` object, and `total_cost_usd` beside it.
    /// `Ok(None)` when the result has no `usage` object; refused as [`Usage::from_report`].
    pub fn from_result(result: &serde_json::Value) -> Result<Option<Usage>, UsageError> {
        let Some(usage) = result.get("usage").filter(|usage| usage.is_object()) else { return Ok(None) };
        let mut parsed = Usage::from_report(usage)?.unwrap_or_default();
        if let Some(cost) = cost_field(result, "total_cost_usd")? {
            parsed.cost_usd = cost;
        }
        Ok(Some(parsed))
    }
}

/// A cost a report names, if it names one: a number from 0 to [`MAX_REPORTED_COST_USD`].
fn cost_field(value: &serde_json::Value, field: &'static str) -> Result<Option<f64>, UsageError> {
    match value.get(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(found) => match found.as_f64().filter(|cost| (0.0..=MAX_REPORTED_COST_USD).contains(cost)) {
            Some(cost) => Ok(Some(cost)),
            None => Err(UsageError::NotACost { field, value: found.to_string() }),
        },
    }
}

/// When periods start: a cron schedule in a time zone.
#[derive(Debug, Clone)]
pub struct Reset {
    cron: croner::Cron,
    tz: chrono_tz::Tz,
}

impl Reset {
    pub fn parse(expression: &str, timezone: &str) -> Result<Reset, String> {
        crate::schedule::check_lists(expression)?;
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .build()
            .parse(expression)
            .map_err(|error| {
                format!("invalid cron expression `{expression}` ({error}); e.g. \"0 0 * * *\" for midnight")
            })?;
        let tz = timezone.parse::<chrono_tz::Tz>().map_err(|_| {
            format!("unknown time zone `{timezone}`; use an IANA name such as \"UTC\" or \"Europe/Paris\"")
        })?;
        let reset = Reset { cron, tz };
        // A pattern that never matches (February 30th) is refused here: every question about
        // its periods would search the whole calendar, and a period would never end.
        if reset.next_after(Timestamp::ZERO).is_none() {
            return Err(format!("cron expression `{expression}` never matches a date"));
        }
        Ok(reset)
    }

    fn local(&self, at: Timestamp) -> chrono::DateTime<chrono_tz::Tz> {
        let utc = chrono::Utc.timestamp_millis_opt(at.0).single().unwrap_or_default();
        utc.with_timezone(&self.tz)
    }

    /// The start of the period that holds `now`: the latest reset at or before it (the epoch if
    /// the schedule never fired before).
    pub fn period_start(&self, now: Timestamp) -> Timestamp {
        self.cron
            .find_previous_occurrence(&self.local(now), true)
            .map_or(Timestamp::ZERO, |at| Timestamp(at.timestamp_millis()))
    }

    /// The first reset after `now`.
    pub fn next_after(&self, now: Timestamp) -> Option<Timestamp> {
        self.cron.find_next_occurrence(&self.local(now), false).ok().map(|at| Timestamp(at.timestamp_millis()))
    }

    /// A time as it is shown next to budgets: `2026-11-22 00:00 Europe/Paris`.
    pub fn show(&self, at: Timestamp) -> String {
        format!("{} {}", self.local(at).format("%Y-%m-%d %H:%M"), self.tz.name())
    }
}

/// Usage of one scope in one period, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub period_start: Timestamp,
    pub scope: Scope,
    pub spent: Spent,
    /// A limit an operator set for this period, replacing the configured one.
    pub limit: Option<Limit>,
}

/// Why a task of `workstream` estimated at `tokens` could never start under `limit`, if it
/// could not: it needs more than a whole period of the global or its workstream's budget.
fn never_fits(limit: impl Fn(&Scope) -> Limit, workstream: Option<&str>, tokens: u64) -> Option<String> {
    let mut scopes = vec![(Scope::Global, "the global".to_string())];
    if let Some(ws) = workstream {
        scopes.push((Scope::Workstream(ws.to_string()), format!("workstream `{ws}`'s")));
    }
    scopes.into_iter().find_map(|(scope, whose)| {
        let max = limit(&scope).daily_tokens.filter(|max| *max > 0)?;
        (tokens > max).then(|| {
            format!("it estimates {tokens} tokens, more than {whose} daily_tokens ({max}): it could never start")
        })
    })
}

/// A threshold reached by a scope.
#[derive(Debug, Clone, PartialEq)]
pub struct Crossing {
    pub scope: Scope,
    pub percent: u8,
    pub spent: Spent,
    pub limit: Limit,
}

/// The budgets of a run in the current period: usage per scope, limits, thresholds reported.
#[derive(Debug, Clone)]
pub struct Budgets {
    spec: BudgetSpec,
    schedule: Reset,
    period_start: Timestamp,
    next_reset: Option<Timestamp>,
    used: BTreeMap<Scope, Spent>,
    /// Limits set by an operator for this period.
    overrides: BTreeMap<Scope, Limit>,
    /// The highest threshold each scope has reported this period.
    reported: BTreeMap<Scope, u8>,
}

impl Budgets {
    /// The budgets at `now`, from the configuration and the stored usage (records of other
    /// periods are ignored). Thresholds the stored usage already reached count as reported:
    /// their events were written with it.
    pub fn new(spec: BudgetSpec, stored: &[UsageRecord], now: Timestamp) -> Budgets {
        let schedule = spec.schedule();
        let period_start = schedule.period_start(now);
        let mut budgets = Budgets {
            next_reset: schedule.next_after(now),
            spec,
            schedule,
            period_start,
            used: BTreeMap::new(),
            overrides: BTreeMap::new(),
            reported: BTreeMap::new(),
        };
        for record in stored.iter().filter(|record| record.period_start == period_start) {
            budgets.used.entry(record.scope.clone()).or_default().add(record.spent);
            if let Some(limit) = record.limit {
                budgets.overrides.insert(record.scope.clone(), limit);
            }
        }
        let scopes: Vec<Scope> = budgets.used.keys().cloned().collect();
        for scope in scopes {
            if let Some(percent) = budgets.percent(&scope) {
                let reached = budgets.levels().filter(|level| f64::from(*level) <= percent).max();
                if let Some(level) = reached {
                    budgets.reported.insert(scope, level);
                }
            }
        }
        budgets
    }

    pub fn spec(&self) -> &BudgetSpec {
        &self.spec
    }

    pub fn schedule(&self) -> &Reset {
        &self.schedule
    }

    pub fn period_start(&self) -> Timestamp {
        self.period_start
    }

    pub fn next_reset(&self) -> Option<Timestamp> {
        self.next_reset
    }

    /// Whether any scope has a limit; without one, budgets only account.
    pub fn any_limit(&self) -> bool {
        self.spec.global.is_set()
            || self.spec.workstreams.values().any(Limit::is_set)
            || self.spec.agents.values().any(Limit::is_set)
            || self.overrides.values().any(Limit::is_set)
    }

    /// Starts the next period when `now` has reached its reset: usage starts from zero and
    /// operators' limits end. Returns whether it did.
    pub fn roll(&mut self, now: Timestamp) -> bool {
        if self.next_reset.is_none_or(|reset| now < reset) {
            return false;
        }
        self.period_start = self.schedule.period_start(now);
        self.next_reset = self.schedule.next_after(now);
        self.used.clear();
        self.overrides.clear();
        self.reported.clear();
        true
    }

    /// [`BudgetSpec::never_fits`], with the limits of this period (an operator's included).
    pub fn never_fits(&self, workstream: Option<&str>, tokens: u64) -> Option<String> {
        never_fits(|scope| self.limit(scope), workstream, tokens)
    }

    pub fn limit(&self, scope: &Scope) -> Limit {
        self.overrides.get(scope).copied().unwrap_or_else(|| self.spec.limit(scope))
    }

    pub fn used(&self, scope: &Scope) -> Spent {
        self.used.get(scope).copied().unwrap_or_default()
    }

    /// Every scope with usage or a limit this period, in order.
    pub fn scopes(&self) -> Vec<Scope> {
        let mut scopes: Vec<Scope> = self.used.keys().cloned().collect();
        scopes.extend(self.overrides.keys().cloned());
        if self.spec.global.is_set() {
            scopes.push(Scope::Global);
        }
        scopes.extend(self.spec.workstreams.keys().map(|name| Scope::Workstream(name.clone())));
        scopes.extend(self.spec.agents.keys().map(|name| Scope::Agent(name.clone())));
        scopes.sort();
        scopes.dedup();
        scopes
    }

    /// How much of its limit a scope has used, in percent (the larger of tokens and cost);
    /// `None` without a limit.
    pub fn percent(&self, scope: &Scope) -> Option<f64> {
        let limit = self.limit(scope);
        percent_of(self.used(scope), limit)
    }

    pub fn exhausted(&self, scope: &Scope) -> bool {
        self.percent(scope).is_some_and(|percent| percent >= 100.0)
    }

    /// Tokens left in a scope's token limit; `None` without one.
    pub fn remaining_tokens(&self, scope: &Scope) -> Option<u64> {
        let limit = self.limit(scope).daily_tokens?;
        Some(limit.saturating_sub(self.used(scope).tokens))
    }

    /// The highest threshold a scope has reported this period.
    pub fn reported(&self, scope: &Scope) -> Option<u8> {
        self.reported.get(scope).copied()
    }

    /// The thresholds, with 100 % last.
    fn levels(&self) -> impl Iterator<Item = u8> + '_ {
        self.spec.thresholds.iter().copied().chain(std::iter::once(100))
    }

    /// Adds usage to scopes; returns the thresholds they reach for the first time this period,
    /// each of them when a report jumps over several.
    pub fn add(&mut self, scopes: &[Scope], spent: Spent) -> Vec<Crossing> {
        let mut crossings = Vec::new();
        for scope in scopes {
            self.used.entry(scope.clone()).or_default().add(spent);
            let Some(percent) = self.percent(scope) else { continue };
            let already = self.reported(scope).unwrap_or(0);
            let reached: Vec<u8> =
                self.levels().filter(|level| *level > already && f64::from(*level) <= percent).collect();
            for level in reached {
                self.reported.insert(scope.clone(), level);
                let (used, limit) = (self.used(scope), self.limit(scope));
                crossings.push(Crossing { scope: scope.clone(), percent: level, spent: used, limit });
            }
        }
        crossings
    }

    /// An operator's limit for this period. Thresholds already reported stay reported.
    pub fn set_limit(&mut self, scope: Scope, limit: Limit) {
        self.overrides.insert(scope, limit);
    }
}

/// Percent of a limit used: the larger of tokens and cost. `None` without a limit.
pub fn percent_of(spent: Spent, limit: Limit) -> Option<f64> {
    let tokens = limit.daily_tokens.map(|max| if max == 0 { 100.0 } else { spent.tokens as f64 * 100.0 / max as f64 });
    let cost = limit.cost_usd.map(|max| if max <= 0.0 { 100.0 } else { spent.cost_usd * 100.0 / max });
    match (tokens, cost) {
        (Some(tokens), Some(cost)) => Some(tokens.max(cost)),
        (one, other) => one.or(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Milliseconds of a UTC date and time.
    fn at(text: &str) -> Timestamp {
        let parsed = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M").unwrap();
        Timestamp(parsed.and_utc().timestamp_millis())
    }

    fn spec(tokens: u64) -> BudgetSpec {
        BudgetSpec { global: Limit { daily_tokens: Some(tokens), cost_usd: None }, ..BudgetSpec::default() }
    }

    #[test]
    fn a_period_runs_from_one_reset_to_the_next_in_its_time_zone() {
        let utc = Reset::parse("0 0 * * *", "UTC").unwrap();
        assert_eq!(utc.period_start(at("2026-11-21 09:30")), at("2026-11-21 00:00"));
        assert_eq!(utc.period_start(at("2026-11-21 00:00")), at("2026-11-21 00:00"), "a reset starts its period");
        assert_eq!(utc.next_after(at("2026-11-21 09:30")), Some(at("2026-11-22 00:00")));
        // Midnight in Paris is 23:00 UTC in winter.
        let paris = Reset::parse("0 0 * * *", "Europe/Paris").unwrap();
        assert_eq!(paris.period_start(at("2026-11-21 22:59")), at("2026-11-20 23:00"));
        assert_eq!(paris.period_start(at("2026-11-21 23:00")), at("2026-11-21 23:00"));
        assert_eq!(paris.show(at("2026-11-21 23:00")), "2026-11-22 00:00 Europe/Paris");
        // Every six hours.
        let quarter = Reset::parse("0 */6 * * *", "UTC").unwrap();
        assert_eq!(quarter.next_after(at("2026-11-21 09:30")), Some(at("2026-11-21 12:00")));
        assert!(Reset::parse("0 0 * *", "UTC").unwrap_err().contains("invalid cron expression"));
        assert!(Reset::parse("0 0 * * *", "Mars/Olympus").unwrap_err().contains("unknown time zone"));
        // Found by fuzzing: `, * ,2 2 0` parsed, never matched, and each question about its
        // periods searched the whole calendar.
        let message = Reset::parse("0 0 30 2 *", "UTC").unwrap_err();
        assert_eq!(message, "cron expression `0 0 30 2 *` never matches a date");
        let message = Reset::parse(", * ,2 2 0", "UTC").unwrap_err();
        assert_eq!(message, "invalid cron expression `, * ,2 2 0`: field 1 (`,`) has an empty item in its list");
    }

    #[test]
    fn thresholds_are_reported_once_per_period_each() {
        let now = at("2026-11-21 09:00");
        let mut budgets = Budgets::new(spec(1000), &[], now);
        let spent = |tokens| Spent { tokens, cost_usd: 0.0 };
        assert!(budgets.add(&[Scope::Global], spent(400)).is_empty());
        let crossed = budgets.add(&[Scope::Global], spent(100));
        assert_eq!(crossed.iter().map(|c| c.percent).collect::<Vec<_>>(), vec![50]);
        assert!(budgets.add(&[Scope::Global], spent(10)).is_empty(), "50 % is reported once");
        let crossed = budgets.add(&[Scope::Global], spent(400));
        assert_eq!(crossed.iter().map(|c| c.percent).collect::<Vec<_>>(), vec![75, 90], "a jump reports each");
        assert!(!budgets.exhausted(&Scope::Global));
        assert_eq!(budgets.remaining_tokens(&Scope::Global), Some(90));
        let crossed = budgets.add(&[Scope::Global], spent(90));
        assert_eq!(crossed[0].percent, 100);
        assert!(budgets.exhausted(&Scope::Global));
        // The next period starts from zero and reports again.
        assert!(!budgets.roll(at("2026-11-21 23:59")));
        assert!(budgets.roll(at("2026-11-22 00:00")));
        assert_eq!(budgets.period_start(), at("2026-11-22 00:00"));
        assert!(!budgets.exhausted(&Scope::Global));
        assert_eq!(budgets.add(&[Scope::Global], spent(600))[0].percent, 50);
    }

    #[test]
    fn stored_usage_of_the_period_is_resumed_with_its_thresholds_reported() {
        let now = at("2026-11-21 09:00");
        let stored = vec![
            UsageRecord {
                period_start: at("2026-11-20 00:00"),
                scope: Scope::Global,
                spent: Spent { tokens: 900, cost_usd: 0.0 },
                limit: None,
            },
            UsageRecord {
                period_start: at("2026-11-21 00:00"),
                scope: Scope::Global,
                spent: Spent { tokens: 800, cost_usd: 0.0 },
                limit: None,
            },
        ];
        let mut budgets = Budgets::new(spec(1000), &stored, now);
        assert_eq!(budgets.used(&Scope::Global).tokens, 800, "yesterday's usage does not count");
        assert_eq!(budgets.reported(&Scope::Global), Some(75));
        let crossed = budgets.add(&[Scope::Global], Spent { tokens: 100, cost_usd: 0.0 });
        assert_eq!(crossed[0].percent, 90);
    }

    #[test]
    fn cost_limits_count_too_and_an_operator_limit_lasts_the_period() {
        let now = at("2026-11-21 09:00");
        let spec = BudgetSpec {
            agents: BTreeMap::from([("coder".into(), Limit { daily_tokens: Some(1_000_000), cost_usd: Some(2.0) })]),
            ..BudgetSpec::default()
        };
        let mut budgets = Budgets::new(spec, &[], now);
        let coder = Scope::Agent("coder".into());
        budgets.add(std::slice::from_ref(&coder), Spent { tokens: 10, cost_usd: 2.5 });
        assert!(budgets.exhausted(&coder), "the cost limit is reached first");
        budgets.set_limit(coder.clone(), Limit { daily_tokens: None, cost_usd: Some(5.0) });
        assert!(!budgets.exhausted(&coder));
        budgets.roll(at("2026-11-22 00:00"));
        assert_eq!(budgets.limit(&coder).cost_usd, Some(2.0), "the configured limit is back");
    }

    #[test]
    fn usage_is_read_from_reports_and_from_claude_shaped_results() {
        let report = serde_json::json!({"task_id": 3, "input_tokens": 1200, "output_tokens": 600});
        assert_eq!(Usage::from_report(&report).unwrap().unwrap().tokens(), 1800);
        assert_eq!(Usage::from_report(&serde_json::json!({"task_id": 3})), Ok(None));
        let result = serde_json::json!({
            "type": "result",
            "result": "done",
            "total_cost_usd": 0.0123,
            "usage": {"input_tokens": 10, "cache_creation_input_tokens": 200, "cache_read_input_tokens": 3000, "output_tokens": 45}
        });
        let usage = Usage::from_result(&result).unwrap().unwrap();
        assert_eq!(usage.tokens(), 3255);
        assert_eq!(usage.cost_usd, 0.0123);
        assert_eq!(Usage::from_result(&serde_json::json!({"ok": true})), Ok(None));
        assert_eq!(Usage::from_result(&serde_json::json!("text")), Ok(None));
    }

    #[test]
    fn usage_reports_beyond_the_bound_or_not_counts_are_refused() {
        let refused = |report: serde_json::Value| Usage::from_report(&report).unwrap_err().to_string();
        assert_eq!(
            refused(serde_json::json!({"input_tokens": i64::MAX})),
            "`input_tokens` must be a whole number of tokens from 0 to 1000000000000, not 9223372036854775807"
        );
        assert_eq!(
            refused(serde_json::json!({"output_tokens": u64::MAX})),
            "`output_tokens` must be a whole number of tokens from 0 to 1000000000000, not 18446744073709551615"
        );
        assert!(refused(serde_json::json!({"input_tokens": -5})).contains("not -5"));
        assert!(refused(serde_json::json!({"input_tokens": 1.5})).contains("not 1.5"));
        assert!(refused(serde_json::json!({"input_tokens": "12"})).contains("not \"12\""));
        // Each count within the bound, their sum beyond it.
        let half = MAX_REPORTED_TOKENS / 2 + 1;
        assert_eq!(
            refused(serde_json::json!({"input_tokens": half, "output_tokens": half})),
            "the report counts 1000000000002 tokens, more than the 1000000000000 one report may count"
        );
        assert!(refused(serde_json::json!({"cost_usd": -1.0})).starts_with("`cost_usd` must be a cost in US dollars"));
        assert!(refused(serde_json::json!({"total_cost_usd": 1e300})).starts_with("`total_cost_usd` must be"));
        let in_result = serde_json::json!({"usage": {"input_tokens": i64::MAX}});
        assert!(Usage::from_result(&in_result).is_err());
        let cost_beside = serde_json::json!({"usage": {"input_tokens": 1}, "total_cost_usd": -3});
        assert!(Usage::from_result(&cost_beside).is_err());
        // The bound itself is a valid report; null is no count.
        let largest = serde_json::json!({"input_tokens": MAX_REPORTED_TOKENS, "output_tokens": null});
        assert_eq!(Usage::from_report(&largest).unwrap().unwrap().tokens(), MAX_REPORTED_TOKENS);
    }

    #[test]
    fn budget_totals_saturate_instead_of_overflowing() {
        let now = at("2026-11-21 09:00");
        let mut budgets = Budgets::new(spec(1000), &[], now);
        let huge = Spent { tokens: u64::MAX - 1, cost_usd: f64::MAX };
        budgets.add(&[Scope::Global], huge);
        let crossed = budgets.add(&[Scope::Global], huge);
        assert_eq!(budgets.used(&Scope::Global).tokens, u64::MAX);
        assert!(crossed.is_empty(), "every threshold was reported with the first report");
        assert!(budgets.exhausted(&Scope::Global));
        assert_eq!(budgets.remaining_tokens(&Scope::Global), Some(0));
        assert_eq!(budgets.used(&Scope::Global).cost_usd, f64::MAX, "finite, so that JSON can carry it");
    }

    #[test]
    fn scopes_are_named_on_the_command_line() {
        assert_eq!("global".parse::<Scope>().unwrap(), Scope::Global);
        assert_eq!("agent:coder".parse::<Scope>().unwrap(), Scope::Agent("coder".into()));
        assert_eq!(Scope::Workstream("build".into()).to_string(), "workstream:build");
        assert!("team:x".parse::<Scope>().is_err());
        assert!("agent:".parse::<Scope>().is_err());
    }
}
