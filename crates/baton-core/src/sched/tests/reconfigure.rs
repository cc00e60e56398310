//! Changing the running plan: agents added, updated and removed, workstreams added in every
//! position of a running run, and a whole configuration diffed and applied.

use super::*;

const PLAN: &str = r#"
[orchestration]
name = "live"
max_concurrent_agents = 4
retry_backoff = "1s"

[[workstreams]]
name = "build"
priority = "critical"

[[workstreams]]
name = "testing"
priority = "high"
depends_on = ["build"]

[[agents]]
name = "builder"
workstream = "build"
capabilities = ["rust"]
command = ["true"]

[[agents]]
name = "tester"
workstream = "testing"
capabilities = ["test"]
command = ["true"]

[[tasks]]
key = "compile"
title = "Compile"
workstream = "build"
requires = ["rust"]

[[tasks]]
key = "unit"
title = "Unit tests"
workstream = "testing"
requires = ["test"]
"#;

fn plan(text: &str) -> Plan {
    config::load("baton.toml", text, &BTreeMap::new()).unwrap_or_else(|error| panic!("{error}"))
}

fn live() -> Harness {
    let mut h = Harness::new(plan(PLAN));
    h.reconfigured = true;
    h
}

/// An agent spec as `baton.toml` would give it.
fn agent(name: &str, workstream: Option<&str>, capabilities: &[&str]) -> AgentSpec {
    let mut spec = plan(PLAN).agents[0].clone();
    spec.name = name.to_string();
    spec.workstream = workstream.map(str::to_string);
    spec.capabilities = capabilities.iter().map(|capability| capability.to_string()).collect();
    spec
}

fn workstream(name: &str, priority: Priority, depends_on: &[&str]) -> WorkstreamSpec {
    WorkstreamSpec {
        name: name.to_string(),
        description: String::new(),
        priority,
        depends_on: depends_on.iter().map(|dep| dep.to_string()).collect(),
        objective: None,
    }
}

fn task(key: &str, workstream: Option<&str>, requires: &[&str]) -> NewTask {
    let mut new = plan(PLAN).tasks[0].clone();
    new.key = Some(key.to_string());
    new.title = key.to_string();
    new.workstream = workstream.map(str::to_string);
    new.requires = requires.iter().map(|capability| capability.to_string()).collect();
    new
}

impl Harness {
    /// Creates tasks as the runtime does: in the store first, then handed to the scheduler.
    fn create(&mut self, tasks: Vec<NewTask>) -> Vec<TaskId> {
        let mut fx = Effects::default();
        let mut ids = Vec::new();
        for new in tasks {
            let id = TaskId(self.store.tasks.keys().last().map_or(1, |last| last.0 + 1));
            let depends_on = new
                .depends_on
                .iter()
                .map(|dep| match dep {
                    TaskRef::Id(id) => *id,
                    TaskRef::Key(key) => {
                        *self.store.tasks.iter().find(|(_, task)| task.key.as_deref() == Some(key)).unwrap().0
                    }
                })
                .collect();
            let created = record(id, &new, depends_on, self.now);
            self.store.tasks.insert(id, created.clone());
            self.add(vec![created], &mut fx);
            ids.push(id);
        }
        self.sched.step(self.now, &mut fx);
        self.apply(fx);
        ids
    }

    fn command(&mut self, run: impl FnOnce(&mut Scheduler, Timestamp, &mut Effects)) -> Effects {
        let mut fx = Effects::default();
        run(&mut self.sched, self.now, &mut fx);
        let performed = fx.clone();
        self.apply(fx);
        // Like the runtime reading baton.toml again after a restart: the changed plan.
        self.plan = self.sched.plan().clone();
        performed
    }

    fn running_on(&self, agent: &str) -> Vec<TaskId> {
        self.running
            .iter()
            .filter(|(id, _)| self.store.tasks[id].assigned_agent.as_deref() == Some(agent))
            .map(|(id, _)| *id)
            .collect()
    }

    fn finish_task(&mut self, id: TaskId) {
        let idx = self.running.iter().position(|(running, _)| *running == id).expect("running");
        self.finish(idx, true);
    }

    fn finish_all(&mut self) {
        for _ in 0..1000 {
            while !self.running.is_empty() {
                self.finish(0, true);
            }
            if !self.wait() || self.sched.state() != RunState::Running {
                return;
            }
        }
        panic!("the run never settles");
    }
}

#[test]
fn an_added_agent_starts_at_once_and_runs_what_only_it_can_run() {
    let mut h = live();
    let fx = h.command(|sched, now, fx| sched.add_agent(agent("writer", None, &["docs"]), now, fx).unwrap());
    assert_eq!(fx.start_agents, vec!["writer".to_string()], "a shared agent starts at once");
    assert!(h.events("AgentAdded").iter().any(|event| event.agent() == Some("writer")));
    assert!(h.sched.plan().agent("writer").is_some());
    let [docs] = h.create(vec![task("docs", None, &["docs"])])[..] else { unreachable!() };
    assert_eq!(h.running_on("writer"), vec![docs]);
    h.finish_all();
    assert_eq!(h.sched.state(), RunState::Succeeded);

    // The name is taken now; a workstream must exist.
    let mut fx = Effects::default();
    let taken = h.sched.add_agent(agent("writer", None, &[]), h.now, &mut fx).unwrap_err();
    assert_eq!(taken.to_string(), "agent `writer` exists already; update it instead, or pick another name");
    let unknown = h.sched.add_agent(agent("other", Some("docs"), &[]), h.now, &mut fx).unwrap_err();
    assert_eq!(unknown.to_string(), "no workstream `docs` in this run; add it first");
}

#[test]
fn an_agent_added_to_a_later_workstream_waits_for_its_phase() {
    let mut h = live();
    let fx =
        h.command(|sched, now, fx| sched.add_agent(agent("tester2", Some("testing"), &["test"]), now, fx).unwrap());
    assert!(fx.start_agents.is_empty(), "testing has not started");
    let compile = h.running_on("builder")[0];
    h.finish_task(compile);
    assert_eq!(agent_state(&h, "tester2"), Some(AgentState::Idle), "started with its phase");
    h.finish_all();
    assert_eq!(h.sched.state(), RunState::Succeeded);
}

#[test]
fn an_update_restarts_a_running_agent_only_when_its_runtime_changed() {
    let mut h = live();
    let compile = h.running_on("builder")[0];
    let mut spec = h.sched.plan().agent("builder").unwrap().clone();
    spec.capabilities.push("lint".into());
    spec.priority = Priority::High;
    let fx = h.command(|sched, now, fx| assert!(!sched.update_agent(spec.clone(), now, fx).unwrap()));
    assert!(fx.stop_agents.is_empty(), "capabilities apply to the next task");
    assert_eq!(h.running_on("builder"), vec![compile], "its task goes on");
    assert!(h.store.events.contains(&EventKind::AgentUpdated { agent: "builder".into(), restarted: false }));

    let AgentKind::Process(process) = &mut spec.kind else { panic!("a process agent") };
    process.command = vec!["bash".into(), "build-v2.sh".into()];
    let fx = h.command(|sched, now, fx| assert!(sched.update_agent(spec.clone(), now, fx).unwrap()));
    assert_eq!(fx.stop_agents, vec!["builder".to_string()]);
    assert!(h.store.events.contains(&EventKind::AgentUpdated { agent: "builder".into(), restarted: true }));
    assert_eq!(agent_state(&h, "builder"), Some(AgentState::Restarting));
    // Its attempt was given up (the runtime's late report is stale) and is retried on it
    // once it is back.
    h.running.retain(|(id, _)| *id != compile);
    assert_eq!(h.state_of("compile"), TaskState::Ready);
    while h.running_on("builder").is_empty() {
        assert!(h.wait());
    }
    assert_eq!(h.sched.plan().agent("builder").unwrap().kind, spec.kind);
    h.finish_all();
    assert_eq!(h.sched.state(), RunState::Succeeded);
    assert_eq!(h.state_of("compile"), TaskState::Succeeded);
}

#[test]
fn a_removed_agent_gives_its_tasks_to_others_and_its_pinned_tasks_are_cancelled() {
    let mut h = live();
    // Open, so that the run outlives `late`'s cancellation and its consequences.
    h.sched.stay_open(true);
    h.command(|sched, now, fx| sched.add_agent(agent("builder2", Some("build"), &["rust"]), now, fx).unwrap());
    let mut pinned = task("pinned", Some("build"), &[]);
    pinned.agent = Some("builder2".into());
    let [pinned] = h.create(vec![pinned])[..] else { unreachable!() };
    assert_eq!(h.running_on("builder2"), vec![pinned]);
    let compile = h.running_on("builder")[0];

    h.command(|sched, now, fx| sched.remove_agent("builder", now, fx).unwrap());
    assert!(h.events("AgentRemoved").iter().any(|event| event.agent() == Some("builder")));
    assert!(h.sched.plan().agent("builder").is_none());
    h.running.retain(|(id, _)| *id != compile);
    assert_eq!(h.state_of("compile"), TaskState::Ready, "waits for builder2's free slot");
    let mut fx = Effects::default();
    let gone = h.sched.start_agent_again("builder", h.now, &mut fx).unwrap_err();
    assert_eq!(gone, Error::UnknownAgent("builder".into()));

    // builder2 finishes its pinned task, takes compile; then it is removed too while a task
    // pinned to it waits: that one can never run.
    h.finish_task(pinned);
    assert_eq!(h.running_on("builder2"), vec![compile]);
    let mut late = task("late", Some("build"), &[]);
    late.agent = Some("builder2".into());
    h.create(vec![late]);
    h.finish_task(compile);
    let late_id = h.running_on("builder2")[0];
    h.command(|sched, now, fx| sched.remove_agent("builder2", now, fx).unwrap());
    h.running.retain(|(id, _)| *id != late_id);
    assert_eq!(h.state_of("late"), TaskState::Cancelled);
    let cancelled = h.store.tasks[&late_id].error.clone().unwrap();
    assert_eq!(cancelled, "no agent can run it");
    // Removed agents are skipped: their records are not written again.
    let mut fx = Effects::default();
    h.sched.agent_records(h.now, &mut fx);
    let written: Vec<String> = fx
        .writes
        .iter()
        .filter_map(|write| match write {
            Write::Agent { record, .. } => Some(record.name.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(written, vec!["tester".to_string()]);

    // A removed name may be added again: a new slot, started with its (started) workstream.
    let mut again = task("again", Some("build"), &["rust"]);
    again.agent = Some("builder".into());
    h.command(|sched, now, fx| sched.add_agent(agent("builder", Some("build"), &["rust"]), now, fx).unwrap());
    let [again] = h.create(vec![again])[..] else { unreachable!() };
    assert_eq!(h.running_on("builder"), vec![again]);
    h.finish_all();
    assert_eq!(h.state_of("again"), TaskState::Succeeded);
    assert_eq!(h.state_of("unit"), TaskState::Cancelled, "upstream build failed with `late`");
}

fn phase_events(h: &Harness, name: &str) -> Vec<u32> {
    h.events(name)
        .iter()
        .map(|event| match event {
            EventKind::PhaseStarted { phase, .. } | EventKind::PhaseCompleted { phase } => *phase,
            _ => unreachable!(),
        })
        .collect()
}

#[test]
fn a_workstream_added_after_phase_one_with_its_dependencies_done_starts_at_once() {
    let mut h = live();
    let compile = h.running_on("builder")[0];
    h.finish_task(compile);
    assert_eq!(h.sched.phase(), 2);
    let unit = h.running_on("tester")[0];

    // Critical and depending on nothing: phase 1 now, below the current one.
    h.command(|sched, now, fx| sched.add_workstream(workstream("docs", Priority::Critical, &[]), now, fx).unwrap());
    assert_eq!(h.sched.plan().phases, vec![vec!["build".to_string(), "docs".to_string()], vec!["testing".to_string()]]);
    assert!(h.events("WorkstreamAdded").len() == 1);
    h.command(|sched, now, fx| sched.add_agent(agent("writer", Some("docs"), &["docs"]), now, fx).unwrap());
    let [docs] = h.create(vec![task("write-docs", Some("docs"), &["docs"])])[..] else { unreachable!() };
    assert_eq!(h.running_on("writer"), vec![docs], "started at once");
    // Empty, docs completed at once (phase 1 again, then 2); its task reopened it, which
    // does not take the run back to phase 1.
    assert_eq!(h.sched.phase(), 2);
    assert_eq!(h.running_on("tester"), vec![unit], "testing keeps running");

    h.finish_task(docs);
    assert_eq!(h.sched.phase(), 2);
    assert_eq!(agent_state(&h, "writer"), Some(AgentState::Stopped), "its workstream is done");
    h.finish_task(unit);
    assert_eq!(h.sched.state(), RunState::Succeeded);
    assert_eq!(phase_events(&h, "PhaseStarted"), vec![1, 2], "no phase announced twice");
    assert_eq!(phase_events(&h, "PhaseCompleted"), vec![1, 1, 2]);
    assert!(h.store.events.contains(&EventKind::WorkstreamCompleted { workstream: "docs".into(), succeeded: true }));
}

#[test]
fn a_workstream_that_depends_on_a_running_one_waits_for_it() {
    let mut h = live();
    h.finish_task(h.running_on("builder")[0]);
    let unit = h.running_on("tester")[0];
    h.command(|sched, now, fx| {
        sched.add_workstream(workstream("release", Priority::Medium, &["testing"]), now, fx).unwrap()
    });
    h.command(|sched, now, fx| sched.add_agent(agent("releaser", Some("release"), &[]), now, fx).unwrap());
    h.create(vec![task("ship", Some("release"), &[])]);
    assert_eq!(h.state_of("ship"), TaskState::Pending, "testing runs");
    assert_eq!(agent_state(&h, "releaser"), None, "not started: still waiting");
    assert_eq!(h.sched.phase(), 2);

    // Not even after a restart in between.
    h.crash_and_resume();
    assert_eq!(h.running_on("tester"), vec![unit], "taken back and run again");
    assert_eq!(h.state_of("ship"), TaskState::Pending);
    h.finish_all();
    assert_eq!(h.sched.state(), RunState::Succeeded);
    assert_eq!(h.state_of("ship"), TaskState::Succeeded);
    assert_eq!(phase_events(&h, "PhaseStarted"), vec![1, 2, 3]);
}

#[test]
fn a_workstream_added_to_a_finished_open_run_starts_and_the_run_stays_open() {
    let mut h = live();
    h.sched.stay_open(true);
    h.finish_all();
    assert_eq!(h.sched.state(), RunState::Running, "kept open");
    assert_eq!(h.sched.phase(), 3, "past the last phase");

    h.command(|sched, now, fx| sched.add_workstream(workstream("docs", Priority::Low, &["build"]), now, fx).unwrap());
    assert_eq!(h.sched.plan().phases.len(), 3);
    assert_eq!(h.sched.phase(), 4, "docs (phase 3) started, and completed at once: it is empty");
    h.command(|sched, now, fx| sched.add_agent(agent("writer", Some("docs"), &[]), now, fx).unwrap());
    let [docs] = h.create(vec![task("write-docs", Some("docs"), &[])])[..] else { unreachable!() };
    assert_eq!(h.running_on("writer"), vec![docs]);
    h.finish_task(docs);
    assert_eq!(h.sched.phase(), 4);
    assert_eq!(h.sched.state(), RunState::Running);
    assert!(h.events("RunCompleted").is_empty());
    assert_eq!(phase_events(&h, "PhaseStarted"), vec![1, 2], "docs started on its own, not with a phase");
    assert_eq!(phase_events(&h, "PhaseCompleted"), vec![1, 2, 3]);
    assert_eq!(agent_state(&h, "writer"), Some(AgentState::Stopped), "docs is done again");
}

#[test]
fn a_workstream_must_depend_on_existing_ones_and_be_new() {
    let mut h = live();
    let mut fx = Effects::default();
    let unknown = h.sched.add_workstream(workstream("docs", Priority::Low, &["nope"]), h.now, &mut fx).unwrap_err();
    assert_eq!(unknown, Error::UnknownWorkstream("nope".into()));
    let taken = h.sched.add_workstream(workstream("build", Priority::Low, &[]), h.now, &mut fx).unwrap_err();
    assert_eq!(taken.to_string(), "workstream `build` exists already");
    let own = h.sched.add_workstream(workstream("loop", Priority::Low, &["loop"]), h.now, &mut fx).unwrap_err();
    assert_eq!(own.to_string(), "workstream dependency cycle: loop -> loop");
    assert!(fx.is_empty(), "nothing changed");
}

const RELOADED: &str = r#"
[orchestration]
name = "live"
max_concurrent_agents = 2
retry_backoff = "5s"

[[workstreams]]
name = "build"
priority = "critical"

[[workstreams]]
name = "docs"
depends_on = ["build"]

[[agents]]
name = "builder"
workstream = "build"
capabilities = ["rust", "lint"]
command = ["true"]

[[agents]]
name = "writer"
workstream = "docs"
command = ["true"]

[[schedules]]
name = "nightly"
cron = "0 3 * * *"
task = { title = "Nightly", workstream = "build" }

[[tasks]]
key = "compile"
title = "Compile"
workstream = "build"
requires = ["rust"]

[[tasks]]
key = "write-docs"
title = "Write the docs"
workstream = "docs"
"#;

#[test]
fn reconfigure_applies_what_can_change_live_and_lists_the_rest() {
    let mut h = live();
    let mut summary = None;
    let keys = h.store.keys();
    h.command(|sched, now, fx| summary = Some(sched.reconfigure(plan(RELOADED), &keys, now, fx).unwrap()));
    let summary = summary.unwrap();
    assert_eq!(summary.added, vec!["workstream docs", "agent writer", "task write-docs"]);
    assert_eq!(summary.removed, vec!["agent tester"]);
    assert_eq!(summary.updated, vec!["setting max_concurrent_agents", "setting retry_backoff", "agent builder"]);
    assert!(summary.restarted.is_empty(), "only capabilities changed");
    assert_eq!(
        summary.not_applied,
        vec![
            "workstream testing: removing a workstream needs a restart (its tasks are left as they are)",
            "schedules: schedules change at the next start",
            "task unit: removing a task from the file does not cancel it; use `baton task cancel`",
        ]
    );
    assert_eq!(summary.new_tasks.len(), 1);
    assert!(h.store.events.contains(&EventKind::ConfigReloaded {
        added: summary.added.clone(),
        removed: summary.removed.clone(),
        updated: summary.updated.clone(),
        not_applied: summary.not_applied.clone(),
        not_added: Vec::new(),
    }));
    assert_eq!(h.sched.plan().settings.max_concurrent_agents, 2);
    assert_eq!(h.sched.plan().settings.retry_backoff, Duration::from_secs(5));
    assert!(h.sched.plan().schedules.is_empty(), "schedules are not changed live");

    // The runtime creates the new tasks; docs waits for build, then runs.
    h.create(summary.new_tasks.clone());
    assert_eq!(h.state_of("write-docs"), TaskState::Pending);
    h.finish_all();
    assert_eq!(h.state_of("write-docs"), TaskState::Succeeded);
    assert_eq!(h.state_of("unit"), TaskState::Cancelled, "nobody can run it any more");
    assert_eq!(h.sched.state(), RunState::Failed);

    // The same configuration again changes nothing.
    let mut fx = Effects::default();
    let again = h.sched.reconfigure(plan(RELOADED), &h.store.keys(), h.now, &mut fx).unwrap();
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn reconfigure_changes_nothing_when_it_fails() {
    let mut h = live();
    let mut broken = plan(PLAN);
    broken.settings.max_concurrent_agents = 1;
    broken.agents.push(agent("ghost", Some("nowhere"), &[]));
    let mut fx = Effects::default();
    let error = h.sched.reconfigure(broken, &h.store.keys(), h.now, &mut fx).unwrap_err();
    assert_eq!(error, Error::UnknownWorkstream("nowhere".into()));
    assert!(fx.is_empty());
    assert_eq!(h.sched.plan().settings.max_concurrent_agents, 4);
}

#[test]
fn a_reload_that_changes_nothing_writes_no_event() {
    let mut h = live();
    let mut summary = None;
    let keys = h.store.keys();
    h.command(|sched, now, fx| summary = Some(sched.reconfigure(plan(PLAN), &keys, now, fx).unwrap()));
    let summary = summary.unwrap();
    assert!(summary.is_empty() && summary.is_unchanged(), "{summary:?}");
    assert!(!h.store.events.iter().any(|event| matches!(event, EventKind::ConfigReloaded { .. })));
}

/// A task of the file whose key a task made through the API has already is not added, and the
/// reload says so, naming the task that holds the key, again at every reload until the clash
/// is resolved.
#[test]
fn a_file_task_whose_key_an_api_task_holds_is_reported_not_added() {
    let mut h = live();
    let ids = h.create(vec![task("write-docs", Some("build"), &["rust"])]);
    let keys = h.store.keys();
    let mut summary = None;
    h.command(|sched, now, fx| summary = Some(sched.reconfigure(plan(RELOADED), &keys, now, fx).unwrap()));
    let summary = summary.unwrap();
    let reason = format!(
        "task write-docs: key `write-docs` is taken by task {}, which the file did not make (made through the API, by \
         a worker or by chat); give the file's task another key",
        ids[0]
    );
    assert_eq!(summary.not_added, vec![reason.clone()]);
    assert!(summary.new_tasks.is_empty(), "{:?}", summary.new_tasks);
    assert!(!summary.added.iter().any(|added| added.starts_with("task")), "{:?}", summary.added);
    assert!(!summary.is_unchanged());
    let reported = h.store.events.iter().any(
        |event| matches!(event, EventKind::ConfigReloaded { not_added, .. } if *not_added == vec![reason.clone()]),
    );
    assert!(reported, "the event says it");
    let in_plan = h.sched.plan().tasks.iter().any(|task| task.key.as_deref() == Some("write-docs"));
    assert!(!in_plan, "the running plan does not have the file's task");

    // Saved again unchanged: still not added, said again.
    let mut fx = Effects::default();
    let again = h.sched.reconfigure(plan(RELOADED), &h.store.keys(), h.now, &mut fx).unwrap();
    assert_eq!(again.not_added, vec![reason]);
}
