//! Budgets in the scheduler, on a controlled clock: thresholds once per period, an exhausted
//! budget holding tasks back (queued, never given up), `estimated_tokens` pre-flight, the reset
//! in a time zone, a raised limit, and a resume that keeps the period's usage.

use super::*;
use crate::budget::{Limit, Scope, Usage};

const PLAN: &str = r#"
[orchestration]
name = "budgets"
max_concurrent_agents = 4

[budget]
daily_tokens = 1000
timezone = "Europe/Paris"

[[workstreams]]
name = "build"

[[agents]]
name = "coder"
workstream = "build"
command = ["true"]

[[tasks]]
key = "a"
title = "A"
workstream = "build"

[[tasks]]
key = "b"
title = "B"
workstream = "build"
depends_on = ["a"]

[[tasks]]
key = "c"
title = "C"
workstream = "build"
depends_on = ["b"]
"#;

/// 2026-11-21 at `hh:mm` UTC.
fn at(hh: i64, mm: i64) -> Timestamp {
    Timestamp(1_795_219_200_000 + (hh * 60 + mm) * 60_000)
}

fn plan(text: &str) -> Plan {
    config::load("baton.toml", text, &BTreeMap::new()).unwrap()
}

/// A harness whose clock starts at 09:00 UTC on 2026-11-21.
fn harness(text: &str) -> Harness {
    let mut h = Harness::new(plan(text));
    h.now = at(9, 0);
    h.step();
    // The harness starts in 1970: what moving to 2026 wrote (a budget reset) is not the test's.
    h.store.events.clear();
    h
}

fn use_tokens(h: &mut Harness, key: &str, tokens: u64) {
    let task = h.store.tasks.values().find(|task| task.key.as_deref() == Some(key)).unwrap().id;
    let usage = Usage { input_tokens: tokens, ..Usage::default() };
    let mut fx = Effects::default();
    let report = serde_json::json!({ "input_tokens": tokens });
    h.sched.record_usage("coder", Some(task), usage, report, h.now, &mut fx);
    h.sched.step(h.now, &mut fx);
    h.apply(fx);
}

fn thresholds(h: &Harness) -> Vec<(String, u8)> {
    h.events("BudgetThreshold")
        .iter()
        .map(|event| match event {
            EventKind::BudgetThreshold { scope, percent, .. } => (scope.clone(), *percent),
            _ => unreachable!(),
        })
        .collect()
}

fn coder_state(h: &Harness) -> AgentState {
    h.sched.shown_state(h.sched.agent_index["coder"])
}

#[test]
fn an_exhausted_budget_holds_tasks_queued_until_the_reset_in_its_time_zone() {
    let mut h = harness(PLAN);
    assert_eq!(h.sched.budgets().period_start(), Timestamp(at(0, 0).0 - 3_600_000), "midnight in Paris is 23:00 UTC");
    assert_eq!(h.running.len(), 1);
    use_tokens(&mut h, "a", 600);
    assert_eq!(thresholds(&h), vec![("global".into(), 50)]);
    h.finish(0, true);
    use_tokens(&mut h, "b", 150);
    assert_eq!(thresholds(&h).len(), 2, "75 % once");
    use_tokens(&mut h, "b", 10);
    assert_eq!(thresholds(&h).len(), 2, "and not again");
    use_tokens(&mut h, "b", 400);
    assert_eq!(
        thresholds(&h).iter().map(|(_, percent)| *percent).collect::<Vec<_>>(),
        vec![50, 75, 90, 100],
        "a jump reports each threshold it passes"
    );
    h.finish(0, true);
    // `c` is ready, but the budget that covers its only agent is exhausted.
    assert_eq!(h.state_of("c"), TaskState::Ready);
    assert!(h.running.is_empty());
    assert_eq!(coder_state(&h), AgentState::BlockedBudget);
    assert_eq!(h.events("TaskBudgetWait").len(), 1);
    assert_eq!(h.sched.state(), RunState::Running, "not cancelled as unrunnable, not ended");
    // Nothing else wakes the run before the reset: midnight in Paris.
    let reset = at(23, 0);
    while h.sched.next_wakeup().is_some_and(|wakeup| wakeup < reset) {
        h.wait(); // a lease renewal left from when `a` and `b` ran
    }
    assert_eq!(h.sched.next_wakeup(), Some(reset));
    h.now = Timestamp(reset.0 - 1);
    let mut fx = Effects::default();
    h.sched.tick(h.now, &mut fx);
    h.apply(fx);
    assert_eq!(h.state_of("c"), TaskState::Ready, "a millisecond before the reset it still waits");
    assert!(h.wait());
    assert_eq!(h.now, reset);
    assert_eq!(h.events("BudgetReset").len(), 1);
    assert_eq!(h.state_of("c"), TaskState::Running);
    assert_eq!(coder_state(&h), AgentState::Active);
    // The new period reports its thresholds again.
    use_tokens(&mut h, "c", 500);
    assert_eq!(thresholds(&h).last(), Some(&("global".to_string(), 50)));
    h.finish(0, true);
    assert_eq!(h.sched.state(), RunState::Succeeded);
    let day_one: u64 = h
        .store
        .usage
        .iter()
        .filter(|((start, scope), _)| *start == Timestamp(at(0, 0).0 - 3_600_000) && *scope == Scope::Global)
        .map(|(_, spent)| spent.tokens)
        .sum();
    assert_eq!(day_one, 1160, "usage is stored per period");
    assert_eq!(h.store.usage[&(reset, Scope::Task(TaskId(3)))].tokens, 500, "and per task");
}

#[test]
fn a_raised_limit_lets_the_agents_work_again() {
    let mut h = harness(PLAN);
    use_tokens(&mut h, "a", 1000);
    h.finish(0, true);
    assert_eq!(h.state_of("b"), TaskState::Ready);
    assert_eq!(coder_state(&h), AgentState::BlockedBudget);
    let mut fx = Effects::default();
    let raised = Limit { daily_tokens: Some(5000), cost_usd: None };
    h.sched.set_budget_limit(Scope::Global, raised, h.now, &mut fx).unwrap();
    h.sched.step(h.now, &mut fx);
    h.apply(fx);
    assert_eq!(h.state_of("b"), TaskState::Running);
    assert_eq!(h.events("BudgetLimitSet").len(), 1);
    let mut fx = Effects::default();
    let unknown = h.sched.set_budget_limit(Scope::Agent("nobody".into()), raised, h.now, &mut fx);
    assert_eq!(unknown, Err(Error::UnknownAgent("nobody".into())));
}

#[test]
fn a_task_whose_estimate_exceeds_what_is_left_waits_while_smaller_ones_run() {
    let text = PLAN
        .replace("depends_on = [\"a\"]\n", "estimated_tokens = 500\n")
        .replace("depends_on = [\"b\"]\n", "estimated_tokens = 100\n")
        .replace("[[agents]]\nname = \"coder\"", "[[agents]]\nname = \"coder\"\nconcurrency = 1");
    let mut h = harness(&text);
    // `a` runs first (oldest), and uses 600 of 1000.
    assert_eq!(h.running.len(), 1);
    use_tokens(&mut h, "a", 600);
    h.finish(0, true);
    assert_eq!(h.state_of("b"), TaskState::Ready, "500 estimated > 400 left");
    assert_eq!(h.state_of("c"), TaskState::Running, "100 estimated fits");
    let waits: Vec<String> = h
        .events("TaskBudgetWait")
        .iter()
        .map(|event| match event {
            EventKind::TaskBudgetWait { reason, .. } => reason.clone(),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(waits.len(), 1);
    assert!(
        waits[0].starts_with("estimated_tokens 500 > 400 left; waits for the reset at 2026-11-22 00:00 Europe/Paris"),
        "{waits:?}"
    );
    assert_eq!(coder_state(&h), AgentState::Active, "the agent itself is not blocked");
}

#[test]
fn per_agent_and_per_workstream_budgets_cover_their_agents_only() {
    let text = PLAN.replace("[budget]\ndaily_tokens = 1000\n", "[budget]\n").replace(
        "[[agents]]\nname = \"coder\"\nworkstream = \"build\"\ncommand = [\"true\"]\n",
        "[[agents]]\nname = \"coder\"\nworkstream = \"build\"\ncommand = [\"true\"]\nbudget = { daily_tokens = 100 }\n\n[[agents]]\nname = \"helper\"\nworkstream = \"build\"\ncommand = [\"true\"]\n",
    );
    let mut h = harness(&text);
    use_tokens(&mut h, "a", 150);
    assert_eq!(thresholds(&h).last(), Some(&("agent:coder".to_string(), 100)));
    assert_eq!(coder_state(&h), AgentState::Active, "still running its task");
    let running = h.running[0];
    h.finish(0, true);
    assert_eq!(h.store.tasks[&running.0].assigned_agent.as_deref(), Some("coder"));
    assert_eq!(h.state_of("b"), TaskState::Running);
    assert_eq!(
        h.store.tasks.values().find(|t| t.key.as_deref() == Some("b")).unwrap().assigned_agent.as_deref(),
        Some("helper")
    );
    assert_eq!(coder_state(&h), AgentState::BlockedBudget);
}

#[test]
fn a_resumed_run_keeps_the_periods_usage() {
    let mut h = harness(PLAN);
    use_tokens(&mut h, "a", 1000);
    h.finish(0, true);
    assert_eq!(h.state_of("b"), TaskState::Ready);
    h.crash_and_resume();
    assert_eq!(h.sched.budgets().used(&Scope::Global).tokens, 1000);
    assert_eq!(h.state_of("b"), TaskState::Ready, "still exhausted after the restart");
    assert_eq!(thresholds(&h).len(), 4, "thresholds are not reported again");
    assert!(h.wait());
    assert_eq!(h.state_of("b"), TaskState::Running);
}

const WIDE: &str = r#"
[orchestration]
name = "wide"

[budget]
daily_tokens = 1000
thresholds = [50, 90]

[[agents]]
name = "coder"
command = ["true"]
concurrency = 2

[[tasks]]
title = "T1"

[[tasks]]
title = "T2"

[[tasks]]
title = "T3"

[[tasks]]
title = "T4"

[[tasks]]
title = "T5"

[[tasks]]
title = "T6"
"#;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random usage, completions and waits: no task is claimed while the budget is exhausted,
    /// each threshold is reported at most once per period, and the run always ends.
    #[test]
    fn budgets_hold_back_claims_and_never_stall_the_run(
        steps in prop::collection::vec((0u64..600, any::<bool>()), 1..40)
    ) {
        let mut h = harness(WIDE);
        for (tokens, finish) in steps {
            if let Some(&(id, _)) = h.running.first() {
                let mut fx = Effects::default();
                let usage = Usage { output_tokens: tokens, ..Usage::default() };
                h.sched.record_usage("coder", Some(id), usage, serde_json::json!({ "output_tokens": tokens }), h.now, &mut fx);
                h.sched.step(h.now, &mut fx);
                h.apply(fx);
                if finish {
                    h.finish(0, true);
                }
            } else if !h.wait() {
                break;
            }
        }
        // Whatever is left finishes without more usage, waiting for resets when it must.
        for _ in 0..100 {
            if h.sched.state() != RunState::Running {
                break;
            }
            if h.running.is_empty() {
                prop_assert!(h.wait(), "a run with open tasks has something to wait for");
            } else {
                h.finish(0, true);
            }
        }
        prop_assert_eq!(h.sched.state(), RunState::Succeeded);
        let mut used = 0u64;
        let mut reported = std::collections::BTreeSet::new();
        for event in &h.store.events {
            match event {
                EventKind::UsageReported { usage, .. } => used += usage["output_tokens"].as_u64().unwrap(),
                EventKind::BudgetReset { .. } => {
                    used = 0;
                    reported.clear();
                }
                EventKind::TaskClaimed { task, .. } => prop_assert!(used < 1000, "task {} claimed with {} used", task, used),
                EventKind::BudgetThreshold { scope, percent, .. } => {
                    prop_assert!(reported.insert((scope.clone(), *percent)), "{} {}% twice in a period", scope, percent);
                }
                _ => {}
            }
        }
    }
}

/// Before each model call an agent reserves tokens: granted while the budgets have them left
/// beyond what calls in flight reserved, refused with the budget that does not allow it; the
/// usage reported for the task settles the reservation, and the reset clears what is held.
#[test]
fn reservations_are_granted_within_what_is_left_and_settled_by_usage() {
    let mut h = harness(PLAN);
    let task = h.store.tasks.values().find(|task| task.key.as_deref() == Some("a")).unwrap().id;
    let reserve = |h: &mut Harness, task: Option<TaskId>, tokens: u64| {
        let mut fx = Effects::default();
        let result = h.sched.reserve_budget("coder", task, tokens, h.now, &mut fx);
        h.apply(fx);
        result
    };
    let granted = reserve(&mut h, Some(task), 600).unwrap();
    assert_eq!(granted, Reservation { tokens: 600, remaining: Some(400) });
    // Another call in flight (no task) finds the first one's tokens held.
    let refused = reserve(&mut h, None, 500).unwrap_err();
    assert_eq!(
        refused.to_string(),
        "budget `global` does not allow 500 more tokens now: 1000 left, 600 of them reserved by calls in flight"
    );
    assert_eq!(reserve(&mut h, None, 400).unwrap(), Reservation { tokens: 400, remaining: Some(0) });
    // The task's call used less than it reserved: its usage counts instead.
    use_tokens(&mut h, "a", 100);
    assert_eq!(reserve(&mut h, Some(task), 500).unwrap(), Reservation { tokens: 500, remaining: Some(0) });
    // Spent: refused whatever is asked, until the reset.
    use_tokens(&mut h, "a", 900);
    let exhausted = reserve(&mut h, None, 1).unwrap_err().to_string();
    assert!(exhausted.starts_with("budget `global` does not allow 1 more tokens now: exhausted until the reset at"));
    h.now = at(23, 30);
    assert_eq!(reserve(&mut h, None, 1000).unwrap(), Reservation { tokens: 1000, remaining: Some(0) });
    // What cannot be: no tokens, a task that is not the agent's, an agent that is not there.
    assert!(matches!(reserve(&mut h, None, 0), Err(Error::InvalidRequest(_))));
    let other = h.store.tasks.values().find(|task| task.key.as_deref() == Some("c")).unwrap().id;
    assert!(matches!(reserve(&mut h, Some(other), 1), Err(Error::InvalidRequest(_))));
    let mut fx = Effects::default();
    assert!(matches!(h.sched.reserve_budget("nobody", None, 1, h.now, &mut fx), Err(Error::UnknownAgent(_))));
}

#[test]
fn a_task_whose_first_call_is_refused_waits_uncounted_until_it_fits() {
    let text = PLAN.replace("[[agents]]\nname = \"coder\"", "[[agents]]\nname = \"coder\"\nconcurrency = 1");
    let mut h = harness(&text);
    let task = h.store.tasks.values().find(|task| task.key.as_deref() == Some("a")).unwrap().id;
    assert_eq!((h.state_of("a"), h.sched.task(task).unwrap().attempt), (TaskState::Running, 1));
    // Another call of the agent's holds 600 of the 1000: the task's first call (500) is refused,
    // and the task waits for it, its attempt not counted.
    let mut fx = Effects::default();
    h.sched.reserve_budget("coder", None, 600, h.now, &mut fx).unwrap();
    assert!(h.sched.reserve_budget("coder", Some(task), 500, h.now, &mut fx).is_err());
    let never = h.sched.wait_for_budget(task, 1, 5000, h.now, &mut fx).unwrap_err().to_string();
    assert!(never.starts_with("its first model call needs 5000 tokens, more than the global daily_tokens"), "{never}");
    h.sched.wait_for_budget(task, 1, 500, h.now, &mut fx).unwrap();
    h.sched.step(h.now, &mut fx);
    h.apply(fx);
    assert_eq!((h.state_of("a"), h.sched.task(task).unwrap().attempt), (TaskState::Ready, 0));
    let waits: Vec<String> = h
        .events("TaskBudgetWait")
        .iter()
        .map(|event| match event {
            EventKind::TaskBudgetWait { reason, .. } => reason.clone(),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(waits.len(), 1);
    assert!(
        waits[0].starts_with("its first model call needs 500: 1000 left, 600 of them reserved by calls in flight"),
        "{waits:?}"
    );
    // The other call reports what it used: what the task needs is left, and it runs again.
    let usage = Usage { input_tokens: 100, ..Usage::default() };
    let mut fx = Effects::default();
    h.sched.record_usage("coder", None, usage, serde_json::json!({ "input_tokens": 100 }), h.now, &mut fx);
    h.sched.step(h.now, &mut fx);
    h.apply(fx);
    assert_eq!((h.state_of("a"), h.sched.task(task).unwrap().attempt), (TaskState::Running, 1));
}
