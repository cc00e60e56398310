//! The conformance suite every [`Store`] implementation must pass. Each backend's tests call
//! [`store_test_suite!`] with a function that makes an empty store.

use baton_core::model::{
    AgentRecord, AgentState, NewTask, Priority, RunState, TaskCount, TaskId, TaskRef, TaskState, TaskStatus,
};
use baton_core::sched::{RunChange, Write};
use baton_core::schedule::{Firing, ScheduleRecord};
use baton_core::{EventKind, Timestamp};

use crate::{Applied, ErrorKind, EventQuery, NewRun, Store, TaskFilter};

/// Generates one `#[tokio::test]` per conformance test, each on a fresh store from `$make`.
#[macro_export]
macro_rules! store_test_suite {
    ($make:expr) => {
        $crate::store_test_suite!(@tests $make;
            runs_are_created_and_found,
            tasks_resolve_dependencies_by_key,
            task_writes_are_compare_and_set,
            task_counts_cover_every_state,
            a_restart_reads_unfinished_tasks_counts_and_statuses,
            attempts_are_told_by_the_events,
            events_are_sequenced_and_filtered,
            events_are_filtered_by_type_and_agent,
            a_failed_write_in_a_batch_changes_nothing,
            concurrent_writers_are_all_committed,
            run_ownership_is_exclusive,
            a_deposed_leader_writes_nothing,
            an_interrupted_run_says_so_and_is_free_to_resume,
            a_new_run_is_refused_while_another_owner_holds_the_plan,
            agents_round_trip,
            process_groups_are_recorded_and_taken,
            schedules_fire_at_most_once_per_due_time,
            budget_usage_accumulates_per_period_and_scope,
            usage_totals_saturate_instead_of_overflowing,
            messages_are_delivered_retried_and_dead_lettered,
            inbox_room_follows_sends_acks_and_dead_letters,
            messages_held_for_a_topic_are_handed_to_its_first_follower,
            audit_entries_are_recorded_and_queried,
            subscribers_get_committed_events_in_order,
            transcripts_are_appended_in_order_per_attempt,
            push_configs_are_kept_replaced_and_deleted,
        );
    };
    (@tests $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let (store, _guard) = $make;
                $crate::suite::$name(store).await;
            }
        )*
    };
}

const T0: Timestamp = Timestamp(1_700_000_000_000);

fn new_run(id: &str) -> NewRun {
    NewRun {
        id: id.into(),
        name: "plan".into(),
        n_phases: 2,
        owner: "node-a".into(),
        owner_pid: 42,
        owner_until: Timestamp(T0.0 + 30_000),
    }
}

pub fn new_task(key: &str, depends_on: &[&str]) -> NewTask {
    NewTask {
        parent: None,
        key: Some(key.into()),
        workstream: Some("build".into()),
        title: format!("Task {key}"),
        description: String::new(),
        input: serde_json::json!({"n": 1}),
        requires: vec!["rust".into()],
        agent: None,
        depends_on: depends_on.iter().map(|key| TaskRef::Key(key.to_string())).collect(),
        priority: Priority::High,
        max_attempts: 3,
        timeout_ms: Some(5_000),
        resources: vec!["file:Cargo.toml".into()],
        estimated_tokens: None,
    }
}

pub async fn runs_are_created_and_found(store: impl Store) {
    assert!(store.latest_run(None).await.unwrap().is_none());
    store.create_run(new_run("r1"), T0).await.unwrap();
    store.create_run(new_run("r2"), Timestamp(T0.0 + 1)).await.unwrap();
    let latest = store.latest_run(Some("plan")).await.unwrap().unwrap();
    assert_eq!(latest.id, "r2");
    assert_eq!(latest.state, RunState::Running);
    assert_eq!(latest.owner.as_deref(), Some("node-a"));
    assert!(store.latest_run(Some("other")).await.unwrap().is_none());
    let change =
        RunChange { state: RunState::Succeeded, phase: 2, n_tasks: 3, n_finished: 3, ended_at: Some(T0), error: None };
    store.apply("r2", T0, vec![Write::Run { change, events: vec![] }]).await.unwrap();
    let run = store.run("r2").await.unwrap().unwrap();
    assert_eq!((run.state, run.n_finished, run.owner), (RunState::Succeeded, 3, None), "an ended run has no owner");
    assert_eq!(
        store
            .apply(
                "nope",
                T0,
                vec![Write::Run {
                    change: RunChange {
                        state: RunState::Running,
                        phase: 0,
                        n_tasks: 0,
                        n_finished: 0,
                        ended_at: None,
                        error: None
                    },
                    events: vec![],
                }]
            )
            .await
            .map_err(|error| error.kind())
            .err(),
        Some(ErrorKind::NotFound),
        "a write to a run the store does not have"
    );
}

pub async fn tasks_resolve_dependencies_by_key(store: impl Store) {
    store.create_run(new_run("r1"), T0).await.unwrap();
    let estimated = NewTask { estimated_tokens: Some(12_000), ..new_task("b", &["a"]) };
    let first = store.create_tasks("r1", vec![new_task("a", &[]), estimated], T0).await.unwrap();
    assert_eq!(first[1].depends_on, vec![first[0].id]);
    assert_eq!((first[0].estimated_tokens, first[1].estimated_tokens), (None, Some(12_000)));
    // A later batch can depend on an earlier one, by key or id.
    let mut by_id = new_task("d", &[]);
    by_id.depends_on = vec![TaskRef::Id(first[0].id)];
    by_id.parent = Some(first[0].id);
    let second = store.create_tasks("r1", vec![new_task("c", &["b"]), by_id], T0).await.unwrap();
    assert_eq!(second[0].depends_on, vec![first[1].id]);
    assert_eq!(second[1].depends_on, vec![first[0].id]);
    // The task whose attempt created it is kept, as returned and as read again.
    assert_eq!((second[0].parent, second[1].parent), (None, Some(first[0].id)));
    assert_eq!(store.task(second[1].id).await.unwrap().unwrap().parent, Some(first[0].id));
    // An unknown key fails the whole batch (refused); so does a key already taken (a conflict).
    let error = store.create_tasks("r1", vec![new_task("e", &[]), new_task("f", &["zzz"])], T0).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Refused, "{error}");
    let error = store.create_tasks("r1", vec![new_task("a", &[])], T0).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Conflict, "{error}");
    // A task that depends on itself, by key or by the id it gets, or a cycle within a batch
    // could never start: the batch is refused.
    let error = store.create_tasks("r1", vec![new_task("g", &["g"])], T0).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Refused, "{error}");
    let mut itself = new_task("h", &[]);
    itself.depends_on = vec![TaskRef::Id(TaskId(second[1].id.0 + 1))];
    let error = store.create_tasks("r1", vec![itself], T0).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Refused, "{error}");
    let cycle = vec![new_task("i", &["a", "k"]), new_task("j", &["i"]), new_task("k", &["j"])];
    let error = store.create_tasks("r1", cycle, T0).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Refused, "{error}");
    let tasks = store.tasks("r1", &TaskFilter::default()).await.unwrap();
    assert_eq!(tasks.len(), 4, "failed batches left nothing behind");
    // A task may depend on a later one of its own batch.
    let forward = store.create_tasks("r1", vec![new_task("l", &["m"]), new_task("m", &["a"])], T0).await.unwrap();
    assert_eq!(forward[0].depends_on, vec![forward[1].id]);
    let stored = store.task(first[1].id).await.unwrap().unwrap();
    assert_eq!(stored, first[1], "a stored task reads back as created");
    let created = store.events(&EventQuery { run_id: Some("r1".into()), ..Default::default() }).await.unwrap();
    assert_eq!(created.iter().filter(|e| e.kind.name() == "TaskCreated").count(), 6);
}

pub async fn task_writes_are_compare_and_set(store: impl Store) {
    store.create_run(new_run("r1"), T0).await.unwrap();
    let task = store.create_tasks("r1", vec![new_task("a", &[])], T0).await.unwrap().remove(0);
    let mut change = task.change();
    change.state = TaskState::Running;
    change.attempt = 1;
    change.assigned_agent = Some("builder".into());
    change.lease_owner = Some("node-a".into());
    change.lease_expires_at = Some(Timestamp(T0.0 + 30_000));
    let claim = Write::Task {
        id: task.id,
        expect_state: TaskState::Pending,
        expect_attempt: 0,
        change: change.clone(),
        events: vec![EventKind::TaskClaimed { task: task.id, agent: "builder".into(), attempt: 1 }],
    };
    let applied = store.apply("r1", T0, vec![claim.clone()]).await.unwrap();
    assert_eq!(applied, vec![Applied::Done]);
    // The same claim again is a conflict and writes no event.
    let applied = store.apply("r1", T0, vec![claim]).await.unwrap();
    assert_eq!(applied, vec![Applied::Conflict(format!("task {} is no longer pending at attempt 0", task.id))]);
    let claims = store.events(&EventQuery { task: Some(task.id), ..Default::default() }).await.unwrap();
    assert_eq!(claims.iter().filter(|e| e.kind.name() == "TaskClaimed").count(), 1);
    // Lease renewal touches only this owner's running tasks.
    let until = Timestamp(T0.0 + 60_000);
    store.apply("r1", T0, vec![Write::RenewLeases { owner: "node-b".into(), until }]).await.unwrap();
    assert_eq!(store.task(task.id).await.unwrap().unwrap().lease_expires_at, Some(Timestamp(T0.0 + 30_000)));
    store.apply("r1", T0, vec![Write::RenewLeases { owner: "node-a".into(), until }]).await.unwrap();
    let running = store.task(task.id).await.unwrap().unwrap();
    assert_eq!(running.lease_expires_at, Some(until));
    assert_eq!(running.state, TaskState::Running);
    assert_eq!(running.assigned_agent.as_deref(), Some("builder"));
    let filtered = store
        .tasks(
            "r1",
            &TaskFilter { state: Some(TaskState::Running), agent: Some("builder".into()), ..Default::default() },
        )
        .await
        .unwrap();
    assert_eq!(filtered.len(), 1);
    let none = store.tasks("r1", &TaskFilter { state: Some(TaskState::Dead), ..Default::default() }).await.unwrap();
    assert!(none.is_empty());
}

pub async fn task_counts_cover_every_state(store: impl Store) {
    store.create_run(new_run("r1"), T0).await.unwrap();
    store.create_run(new_run("r2"), T0).await.unwrap();
    let zeros: Vec<(TaskState, u64)> = TaskState::ALL.iter().map(|state| (*state, 0)).collect();
    assert_eq!(store.task_counts("r1").await.unwrap(), zeros, "an empty run counts zero of each");
    let tasks =
        store.create_tasks("r1", vec![new_task("a", &[]), new_task("b", &[]), new_task("c", &[])], T0).await.unwrap();
    store.create_tasks("r2", vec![new_task("a", &[])], T0).await.unwrap();
    let mut claim = tasks[0].change();
    claim.state = TaskState::Running;
    claim.attempt = 1;
    let mut cancel = tasks[1].change();
    cancel.state = TaskState::Cancelled;
    let writes = vec![
        Write::Task {
            id: tasks[0].id,
            expect_state: TaskState::Pending,
            expect_attempt: 0,
            change: claim,
            events: vec![],
        },
        Write::Task {
            id: tasks[1].id,
            expect_state: TaskState::Pending,
            expect_attempt: 0,
            change: cancel,
            events: vec![],
        },
    ];
    store.apply("r1", T0, writes).await.unwrap();
    let counts = store.task_counts("r1").await.unwrap();
    let expected: Vec<(TaskState, u64)> = TaskState::ALL
        .iter()
        .map(|state| {
            let n = match state {
                TaskState::Pending | TaskState::Running | TaskState::Cancelled => 1,
                _ => 0,
            };
            (*state, n)
        })
        .collect();
    assert_eq!(counts, expected);
    let r2: u64 = store.task_counts("r2").await.unwrap().iter().map(|(_, n)| n).sum();
    assert_eq!(r2, 1, "runs are counted apart");
    assert_eq!(store.task_counts("missing").await.unwrap(), zeros);
}

/// What a restart reads instead of every task: the unfinished tasks, the counts per workstream
/// and state (kept through inserts, state changes and a compare-and-set that fails), and the
/// state of given tasks, by id or by key.
pub async fn a_restart_reads_unfinished_tasks_counts_and_statuses(store: impl Store) {
    store.create_run(new_run("r1"), T0).await.unwrap();
    store.create_run(new_run("r2"), T0).await.unwrap();
    let mut loose = new_task("loose", &[]);
    loose.workstream = None;
    let tasks = store
        .create_tasks("r1", vec![new_task("a", &[]), new_task("b", &["a"]), new_task("c", &[]), loose], T0)
        .await
        .unwrap();
    let other = store.create_tasks("r2", vec![new_task("a", &[])], T0).await.unwrap().remove(0);
    let (a, b, c, loose) = (&tasks[0], &tasks[1], &tasks[2], &tasks[3]);
    let write = |task: &baton_core::model::TaskRecord, from: TaskState, to: TaskState| {
        let mut change = task.change();
        change.state = to;
        Write::Task { id: task.id, expect_state: from, expect_attempt: 0, change, events: vec![] }
    };
    let writes = vec![
        write(a, TaskState::Pending, TaskState::Succeeded),
        write(b, TaskState::Pending, TaskState::Dead),
        write(loose, TaskState::Pending, TaskState::Ready),
    ];
    store.apply("r1", T0, writes).await.unwrap();
    // A compare-and-set that fails changes no count.
    let stale = store.apply("r1", T0, vec![write(a, TaskState::Pending, TaskState::Cancelled)]).await.unwrap();
    assert!(matches!(stale[0], Applied::Conflict(_)));

    let unfinished: Vec<TaskId> = store.unfinished_tasks("r1").await.unwrap().iter().map(|task| task.id).collect();
    assert_eq!(unfinished, vec![c.id, loose.id], "finished tasks are not read");
    let counts = store.task_counts_by_workstream("r1").await.unwrap();
    let count = |workstream: Option<&str>, state: TaskState| TaskCount {
        workstream: workstream.map(str::to_string),
        state,
        n: 1,
    };
    let mut expected = vec![
        count(None, TaskState::Ready),
        count(Some("build"), TaskState::Pending),
        count(Some("build"), TaskState::Succeeded),
        count(Some("build"), TaskState::Dead),
    ];
    let order =
        |counts: &mut Vec<TaskCount>| counts.sort_by_key(|count| (count.workstream.clone(), count.state.index()));
    let mut counts = counts;
    order(&mut counts);
    order(&mut expected);
    assert_eq!(counts, expected);
    assert_eq!(store.task_counts_by_workstream("missing").await.unwrap(), Vec::new());

    let statuses = store.task_statuses("r1", &[b.id, a.id, other.id, TaskId(999_999)]).await.unwrap();
    let status = |task: &baton_core::model::TaskRecord, state| TaskStatus { id: task.id, key: task.key.clone(), state };
    assert_eq!(
        statuses,
        vec![status(a, TaskState::Succeeded), status(b, TaskState::Dead)],
        "by id; tasks of other runs and unknown ids are left out"
    );
    assert_eq!(store.task_statuses("r1", &[]).await.unwrap(), Vec::new());
    let by_key = store.tasks_by_key("r1", &["c".to_string(), "a".to_string(), "nothing".to_string()]).await.unwrap();
    assert_eq!(by_key, vec![status(a, TaskState::Succeeded), status(c, TaskState::Pending)]);
    assert_eq!(store.tasks_by_key("r2", &["a".to_string()]).await.unwrap(), vec![status(&other, TaskState::Pending)]);
    // The per-state totals come from the same counts.
    let totals = store.task_counts("r1").await.unwrap();
    assert_eq!(totals.iter().map(|(_, n)| n).sum::<u64>(), 4);
}

/// Each claim starts an attempt and its end closes it, whatever ended it; a re-run attempt
/// under the same number is a new record; other tasks' events are not mixed in.
pub async fn attempts_are_told_by_the_events(store: impl Store) {
    use crate::AttemptRecord;
    store.create_run(new_run("r1"), T0).await.unwrap();
    let tasks =
        store.create_tasks("r1", vec![new_task("a", &[]), new_task("b", &[]), new_task("c", &[])], T0).await.unwrap();
    let (a, b, c) = (tasks[0].id, tasks[1].id, tasks[2].id);
    let at = |n: i64| Timestamp(T0.0 + n * 1_000);
    let claimed =
        |task: TaskId, agent: &str, attempt: u32| EventKind::TaskClaimed { task, agent: agent.into(), attempt };
    let steps = vec![
        (1, vec![claimed(a, "builder", 1), claimed(b, "builder", 1)]),
        (
            2,
            vec![
                EventKind::TaskFailed { task: a, agent: Some("builder".into()), attempt: 1, reason: "exit 1".into() },
                EventKind::TaskRetrying { task: a, attempt: 2, not_before: at(3) },
            ],
        ),
        (3, vec![claimed(a, "reviewer", 2)]),
        (4, vec![EventKind::TaskLeaseExpired { task: a, agent: None, attempt: 2 }]),
        (5, vec![claimed(a, "builder", 3)]),
        (6, vec![EventKind::TaskRequeued { task: a, from: TaskState::Running }]),
        (7, vec![claimed(a, "builder", 3)]),
        (8, vec![EventKind::TaskCompleted { task: a, agent: "builder".into(), attempt: 3 }]),
    ];
    for (n, events) in steps {
        store.append_events("r1", at(n), events).await.unwrap();
    }
    let record = |attempt: u32, agent: &str, started: i64, ended: Option<(i64, &str, Option<&str>)>| AttemptRecord {
        attempt,
        agent: Some(agent.into()),
        started_at: Some(at(started)),
        ended_at: ended.map(|(n, _, _)| at(n)),
        outcome: ended.map(|(_, outcome, _)| outcome.to_string()),
        error: ended.and_then(|(_, _, error)| error.map(str::to_string)),
    };
    assert_eq!(
        store.attempts(a).await.unwrap(),
        vec![
            record(1, "builder", 1, Some((2, "failed", Some("exit 1")))),
            record(2, "reviewer", 3, Some((4, "lease expired", None))),
            record(3, "builder", 5, Some((6, "requeued", None))),
            record(3, "builder", 7, Some((8, "succeeded", None))),
        ]
    );
    assert_eq!(store.attempts(b).await.unwrap(), vec![record(1, "builder", 1, None)], "a running attempt is open");
    store
        .append_events("r1", at(9), vec![EventKind::TaskCancelled { task: b, reason: "not needed".into() }])
        .await
        .unwrap();
    assert_eq!(
        store.attempts(b).await.unwrap(),
        vec![record(1, "builder", 1, Some((9, "cancelled", Some("not needed"))))]
    );
    store.append_events("r1", at(9), vec![EventKind::TaskCancelled { task: c, reason: "no".into() }]).await.unwrap();
    assert!(store.attempts(c).await.unwrap().is_empty(), "a task cancelled before any claim had no attempt");
}

pub async fn events_are_sequenced_and_filtered(store: impl Store) {
    assert_eq!(store.last_event_seq().await.unwrap(), 0, "no event yet");
    store.create_run(new_run("r1"), T0).await.unwrap();
    store.create_run(new_run("r2"), T0).await.unwrap();
    for phase in 1..=3 {
        store.append_events("r1", T0, vec![EventKind::PhaseStarted { phase, workstreams: vec![] }]).await.unwrap();
    }
    let all = store.events(&EventQuery::default()).await.unwrap();
    let seqs: Vec<i64> = all.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "sequence numbers grow by one: {seqs:?}");
    let r1 = store.events(&EventQuery { run_id: Some("r1".into()), ..Default::default() }).await.unwrap();
    assert_eq!(r1.len(), 4);
    let since = store.events(&EventQuery { since: r1[1].seq, limit: Some(1), ..Default::default() }).await.unwrap();
    assert_eq!(since.len(), 1);
    assert_eq!(since[0].seq, r1[1].seq + 1);
    assert_eq!(r1[3].kind, EventKind::PhaseStarted { phase: 3, workstreams: vec![] });
    assert_eq!(store.last_event_seq().await.unwrap(), *seqs.last().unwrap(), "the newest event's number");
}

/// Type and agent filters combine with the others, and `limit` counts matching events only,
/// so that paging with `since` through a filtered stream misses nothing.
pub async fn events_are_filtered_by_type_and_agent(store: impl Store) {
    store.create_run(new_run("r1"), T0).await.unwrap();
    store.create_run(new_run("r2"), T0).await.unwrap();
    let task = TaskId(7);
    let claimed = |agent: &str, attempt: u32| EventKind::TaskClaimed { task, agent: agent.into(), attempt };
    let progress = |agent: &str| EventKind::TaskProgress { task, agent: agent.into(), fraction: None, message: None };
    let r1_events = vec![
        claimed("builder", 1),
        progress("builder"),
        progress("builder"),
        EventKind::TaskFailed { task, agent: Some("builder".into()), attempt: 1, reason: "exit 1".into() },
        claimed("reviewer", 2),
        progress("reviewer"),
        EventKind::TaskLeaseExpired { task, agent: None, attempt: 2 },
        claimed("builder", 3),
        progress("builder"),
        EventKind::TaskCompleted { task, agent: "builder".into(), attempt: 3 },
    ];
    store.append_events("r1", T0, r1_events).await.unwrap();
    store.append_events("r2", T0, vec![claimed("builder", 1)]).await.unwrap();
    let read = |query: EventQuery| {
        let store = &store;
        async move {
            store
                .events(&query)
                .await
                .unwrap()
                .into_iter()
                .map(|event| (event.run_id, event.kind.name(), event.kind.agent().map(str::to_string)))
                .collect::<Vec<_>>()
        }
    };
    let claims = |run: &str, agent: &str| (run.to_string(), "TaskClaimed", Some(agent.to_string()));
    let kinds = |names: &[&str]| names.iter().map(|name| name.to_string()).collect::<Vec<_>>();

    let all_claims = read(EventQuery { kinds: kinds(&["TaskClaimed"]), ..Default::default() }).await;
    assert_eq!(
        all_claims,
        vec![claims("r1", "builder"), claims("r1", "reviewer"), claims("r1", "builder"), claims("r2", "builder")]
    );
    let builder_ends = read(EventQuery {
        run_id: Some("r1".into()),
        kinds: kinds(&["TaskCompleted", "TaskFailed", "TaskLeaseExpired"]),
        agent: Some("builder".into()),
        ..Default::default()
    })
    .await;
    let names: Vec<&str> = builder_ends.iter().map(|(_, name, _)| *name).collect();
    assert_eq!(names, vec!["TaskFailed", "TaskCompleted"], "a lease expired without an agent is nobody's");
    let reviewer = read(EventQuery { agent: Some("reviewer".into()), ..Default::default() }).await;
    let names: Vec<&str> = reviewer.iter().map(|(_, name, _)| *name).collect();
    assert_eq!(names, vec!["TaskClaimed", "TaskProgress"]);
    let nothing = read(EventQuery { kinds: kinds(&["NoSuchEvent"]), ..Default::default() }).await;
    assert!(nothing.is_empty(), "an unknown type matches nothing");
    let lost =
        read(EventQuery { kinds: kinds(&["TaskLeaseExpired"]), agent: Some("builder".into()), ..Default::default() })
            .await;
    assert!(lost.is_empty());

    // Paging through builder's progress two at a time: `limit` counts matches, `since` resumes.
    let mut since = 0;
    let mut pages = Vec::new();
    loop {
        let query = EventQuery {
            run_id: Some("r1".into()),
            since,
            limit: Some(2),
            kinds: kinds(&["TaskProgress", "TaskClaimed"]),
            agent: Some("builder".into()),
            ..Default::default()
        };
        let page = store.events(&query).await.unwrap();
        let Some(last) = page.last() else { break };
        since = last.seq;
        pages.push(page.iter().map(|event| event.kind.name()).collect::<Vec<_>>());
    }
    assert_eq!(
        pages,
        vec![vec!["TaskClaimed", "TaskProgress"], vec!["TaskProgress", "TaskClaimed"], vec!["TaskProgress"]]
    );
    // The task filter still applies alongside.
    let other_task = EventQuery { task: Some(TaskId(8)), kinds: kinds(&["TaskClaimed"]), ..Default::default() };
    assert!(store.events(&other_task).await.unwrap().is_empty());
}

pub async fn a_failed_write_in_a_batch_changes_nothing(store: impl Store) {
    store.create_run(new_run("r1"), T0).await.unwrap();
    let before = store.events(&EventQuery::default()).await.unwrap().len();
    let bad = Write::Run {
        change: RunChange {
            state: RunState::Running,
            phase: 1,
            n_tasks: 0,
            n_finished: 0,
            ended_at: None,
            error: None,
        },
        events: vec![],
    };
    // The event is written first, then the run update fails: both are rolled back.
    let result = store.apply("missing", T0, vec![Write::Event(EventKind::PhaseCompleted { phase: 1 }), bad]).await;
    assert_eq!(result.map_err(|error| error.kind()).err(), Some(ErrorKind::NotFound));
    assert_eq!(store.events(&EventQuery::default()).await.unwrap().len(), before);
}

pub async fn concurrent_writers_are_all_committed(store: impl Store + Clone) {
    store.create_run(new_run("r1"), T0).await.unwrap();
    let mut handles = Vec::new();
    for writer in 0..8 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            for n in 0..25 {
                let key = format!("w{writer}-{n}");
                store.create_tasks("r1", vec![new_task(&key, &[])], T0).await.unwrap();
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    let tasks = store.tasks("r1", &TaskFilter::default()).await.unwrap();
    assert_eq!(tasks.len(), 200);
    let page = store
        .tasks("r1", &TaskFilter { after: Some(tasks[99].id), limit: Some(50), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(page.first().map(|t| t.id), Some(tasks[100].id));
    assert_eq!(page.len(), 50);
}

pub async fn run_ownership_is_exclusive(store: impl Store) {
    store.create_run(new_run("r1"), T0).await.unwrap();
    let take = |owner: &str, now: i64| {
        (
            Timestamp(now),
            vec![Write::RunOwner {
                owner: Some(owner.into()),
                pid: Some(7),
                until: Some(Timestamp(now + 30_000)),
                expect_owner: None,
            }],
        )
    };
    let (now, writes) = take("node-b", T0.0 + 1_000);
    let applied = store.apply("r1", now, writes).await.unwrap();
    assert!(matches!(applied[0], Applied::Conflict(_)), "node-a's claim holds");
    let (now, writes) = take("node-b", T0.0 + 31_000);
    assert_eq!(store.apply("r1", now, writes).await.unwrap(), vec![Applied::Done], "an expired claim can be taken");
    let run = store.run("r1").await.unwrap().unwrap();
    assert_eq!((run.owner.as_deref(), run.owner_pid), (Some("node-b"), Some(7)));
    let (now, writes) = take("node-b", T0.0 + 32_000);
    assert_eq!(store.apply("r1", now, writes).await.unwrap(), vec![Applied::Done], "the owner renews");
}

/// A batch fenced on its node's claim (`Write::Fence`) is applied while that node holds the
/// run; once another node has taken the run over, the deposed node's batch is refused whole,
/// as a conflict saying who leads now, and nothing of it is stored: neither its task change
/// nor its events.
pub async fn a_deposed_leader_writes_nothing(store: impl Store) {
    store.create_run(new_run("r1"), T0).await.unwrap();
    let tasks = store.create_tasks("r1", vec![new_task("a", &[]), new_task("b", &[])], T0).await.unwrap();
    let start = |task: &baton_core::model::TaskRecord, by: &str| {
        let mut change = task.change();
        change.state = TaskState::Running;
        change.attempt = 1;
        change.assigned_agent = Some("w".into());
        vec![
            Write::Fence { owner: by.into() },
            Write::Task {
                id: task.id,
                expect_state: TaskState::Pending,
                expect_attempt: 0,
                change,
                events: vec![EventKind::TaskClaimed { task: task.id, agent: "w".into(), attempt: 1 }],
            },
        ]
    };
    assert_eq!(store.apply("r1", T0, start(&tasks[0], "node-a")).await.unwrap(), vec![Applied::Done, Applied::Done]);

    // node-a's claim lapses and node-b takes the run over.
    let later = Timestamp(T0.0 + 31_000);
    let take = Write::RunOwner {
        owner: Some("node-b".into()),
        pid: Some(8),
        until: Some(Timestamp(T0.0 + 61_000)),
        expect_owner: None,
    };
    assert_eq!(store.apply("r1", later, vec![take]).await.unwrap(), vec![Applied::Done]);
    let n_events = store.events(&EventQuery::default()).await.unwrap().len();
    let error = store.apply("r1", later, start(&tasks[1], "node-a")).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Conflict, "{error}");
    assert!(error.to_string().contains("node-b"), "it says who leads: {error}");
    assert_eq!(store.task(tasks[1].id).await.unwrap().unwrap().state, TaskState::Pending, "nothing stored");
    assert_eq!(store.events(&EventQuery::default()).await.unwrap().len(), n_events, "no event stored");
    // The new leader writes.
    assert_eq!(store.apply("r1", later, start(&tasks[1], "node-b")).await.unwrap(), vec![Applied::Done, Applied::Done]);
    let error = store.apply("r2", later, vec![Write::Fence { owner: "node-b".into() }]).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound, "{error}");
    // Once the run has finished (its claim released), a fenced batch is nobody's.
    let change = RunChange {
        state: RunState::Succeeded,
        phase: 0,
        n_tasks: 2,
        n_finished: 2,
        ended_at: Some(later),
        error: None,
    };
    store.apply("r1", later, vec![Write::Run { change, events: Vec::new() }]).await.unwrap();
    let error = store.apply("r1", later, vec![Write::Fence { owner: "node-a".into() }]).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Conflict, "a deposed node does not write into a finished run: {error}");
}

/// A run stopped before its end by its owner is `interrupted`, unclaimed; only its owner may
/// say so, and only of a running run.
pub async fn an_interrupted_run_says_so_and_is_free_to_resume(store: impl Store) {
    store.create_run(new_run("r1"), T0).await.unwrap();
    let interrupted = |owner: &str| vec![Write::RunInterrupted { expect_owner: owner.into() }];
    let applied = store.apply("r1", T0, interrupted("node-b")).await.unwrap();
    assert!(matches!(applied[0], Applied::Conflict(_)), "only the owner interrupts its run");
    assert_eq!(store.run("r1").await.unwrap().unwrap().state, RunState::Running);

    assert_eq!(store.apply("r1", T0, interrupted("node-a")).await.unwrap(), vec![Applied::Done]);
    let run = store.run("r1").await.unwrap().unwrap();
    assert_eq!(run.state, RunState::Interrupted);
    assert_eq!((run.owner, run.owner_pid, run.owner_until, run.ended_at), (None, None, None, None));
    let events = store.events(&EventQuery { run_id: Some("r1".into()), ..Default::default() }).await.unwrap();
    let said: Vec<&EventKind> =
        events.iter().map(|event| &event.kind).filter(|kind| kind.name() == "RunInterrupted").collect();
    assert_eq!(said, vec![&EventKind::RunInterrupted { owner: "node-a".into() }], "said once, with the state change");
    let applied = store.apply("r1", T0, interrupted("node-a")).await.unwrap();
    assert!(matches!(applied[0], Applied::Conflict(_)), "an interrupted run is not interrupted again");
    assert_eq!(store.latest_run(Some("plan")).await.unwrap().map(|run| run.state), Some(RunState::Interrupted));
}

/// The claim on a plan is taken with its new run, atomically: of two processes that both saw
/// no unfinished run and create one at the same instant, the second is refused with who holds
/// the plan. An unfinished run whose claim expired, a finished run, a run of another plan and
/// a run of the same owner do not stand in the way.
pub async fn a_new_run_is_refused_while_another_owner_holds_the_plan(store: impl Store) {
    let by = |id: &str, owner: &str, pid: u32, until: i64| NewRun {
        owner: owner.into(),
        owner_pid: pid,
        owner_until: Timestamp(until),
        ..new_run(id)
    };
    let until = T0.0 + 30_000;
    let (first, second) = tokio::join!(
        store.create_run(by("r1", "host-a:11:x", 11, until), T0),
        store.create_run(by("r2", "host-b:22:y", 22, until), T0)
    );
    let (created, refused) = match (first, second) {
        (Ok(run), Err(error)) | (Err(error), Ok(run)) => (run, error),
        other => panic!("exactly one of two simultaneous runs of a plan is created: {other:?}"),
    };
    assert_eq!(refused.kind(), ErrorKind::Conflict);
    let crate::Error::RunHeld { plan, run, owner, pid, .. } = &refused else { panic!("{refused:?}") };
    assert_eq!(
        (plan.as_str(), run, Some(owner), Some(*pid)),
        ("plan", &created.id, created.owner.as_ref(), created.owner_pid)
    );
    let other_id = if created.id == "r1" { "r2" } else { "r1" };
    assert!(store.run(other_id).await.unwrap().is_none(), "the refused run left nothing");

    // Its owner's own second run, and another plan's, are not held.
    let holder = created.owner.clone().unwrap();
    store.create_run(NewRun { name: "other".into(), ..by("r3", "host-c:33:z", 33, until) }, T0).await.unwrap();
    store.create_run(by("r4", &holder, 11, until), Timestamp(T0.0 + 1)).await.unwrap();
    // Once the claims expired the plan is free; a live claim holds it until its run ends.
    let later = Timestamp(until + 1);
    store.create_run(by("r5", "host-d:44:w", 44, later.0 + 30_000), later).await.unwrap();
    let held = store.create_run(by("r6", "host-e:55:v", 55, later.0 + 30_000), later).await;
    assert!(matches!(&held, Err(crate::Error::RunHeld { run, .. }) if run == "r5"), "{held:?}");
    let ended = Write::Run {
        change: RunChange {
            state: RunState::Succeeded,
            phase: 0,
            n_tasks: 0,
            n_finished: 0,
            ended_at: Some(later),
            error: None,
        },
        events: vec![],
    };
    store.apply("r5", later, vec![ended]).await.unwrap();
    store.create_run(by("r6", "host-e:55:v", 55, later.0 + 30_000), later).await.unwrap();
}

pub async fn agents_round_trip(store: impl Store) {
    store.create_run(new_run("r1"), T0).await.unwrap();
    let record = AgentRecord {
        run_id: "r1".into(),
        name: "builder".into(),
        role: "Build agent".into(),
        workstream: Some("build".into()),
        priority: Priority::Critical,
        capabilities: vec!["rust".into()],
        runtime: "process".into(),
        state: AgentState::Idle,
        running: 0,
        tasks_succeeded: 2,
        tasks_failed: 1,
        last_activity: Some(T0),
        updated_at: T0,
    };
    store.apply("r1", T0, vec![Write::Agent { record: record.clone(), events: vec![] }]).await.unwrap();
    let mut updated = record.clone();
    updated.state = AgentState::Active;
    store.apply("r1", T0, vec![Write::Agent { record: updated.clone(), events: vec![] }]).await.unwrap();
    assert_eq!(store.agents("r1").await.unwrap(), vec![updated]);
}

/// Totals at the edge of what a count holds: adding to them saturates (SQLite would otherwise
/// turn an overflowing sum into a REAL, and the plan's budgets would no longer read), in one
/// run and across the runs of a plan.
pub async fn usage_totals_saturate_instead_of_overflowing(store: impl Store) {
    use baton_core::budget::{Scope, Spent};
    store.create_run(new_run("r1"), T0).await.unwrap();
    let usage = |tokens: u64, cost_usd: f64| Write::Usage {
        period_start: T0,
        scope: Scope::Global,
        spent: Spent { tokens, cost_usd },
        events: Vec::new(),
    };
    let near_max = i64::MAX as u64 - 10;
    store.apply("r1", T0, vec![usage(near_max, 1.0), usage(100, 1.0)]).await.unwrap();
    store.apply("r1", T0, vec![usage(u64::MAX, f64::MAX), usage(i64::MAX as u64, f64::MAX)]).await.unwrap();
    let read = store.usage("r1", Timestamp::ZERO).await.unwrap();
    assert_eq!(read[0].spent, Spent { tokens: i64::MAX as u64, cost_usd: f64::MAX });
    // A second run of the plan at the maximum too: the plan's total saturates as well.
    store.create_run(new_run("r2"), Timestamp(T0.0 + 1)).await.unwrap();
    store.apply("r2", T0, vec![usage(u64::MAX, 1.0)]).await.unwrap();
    let plan = store.usage("r2", Timestamp::ZERO).await.unwrap();
    assert_eq!(plan.len(), 1);
    assert_eq!(plan[0].spent, Spent { tokens: u64::MAX - 1, cost_usd: f64::MAX });
}

pub async fn budget_usage_accumulates_per_period_and_scope(store: impl Store) {
    use baton_core::budget::{Limit, Scope, Spent};
    store.create_run(new_run("r1"), T0).await.unwrap();
    store.create_run(NewRun { name: "other".into(), ..new_run("r2") }, T0).await.unwrap();
    let day = 86_400_000;
    let usage = |period: i64, scope: Scope, tokens: u64, cost_usd: f64, events: Vec<EventKind>| Write::Usage {
        period_start: Timestamp(T0.0 + period * day),
        scope,
        spent: Spent { tokens, cost_usd },
        events,
    };
    let threshold = EventKind::BudgetThreshold {
        scope: "global".into(),
        percent: 50,
        used_tokens: 700,
        limit_tokens: Some(1000),
        used_cost_usd: 0.0,
        limit_cost_usd: None,
        resets_at: None,
    };
    let writes = vec![
        usage(0, Scope::Global, 500, 0.25, Vec::new()),
        usage(0, Scope::Agent("coder".into()), 500, 0.25, Vec::new()),
        usage(0, Scope::Global, 200, 0.5, vec![threshold]),
        usage(0, Scope::Task(TaskId(7)), 200, 0.5, Vec::new()),
        usage(1, Scope::Global, 30, 0.0, Vec::new()),
    ];
    store.apply("r1", T0, writes).await.unwrap();
    store.apply("r2", T0, vec![usage(0, Scope::Global, 9, 0.0, Vec::new())]).await.unwrap();
    let limit = Limit { daily_tokens: Some(5000), cost_usd: None };
    let set =
        Write::BudgetLimit { period_start: T0, scope: Scope::Workstream("build".into()), limit, events: Vec::new() };
    store.apply("r1", T0, vec![set]).await.unwrap();

    let all = store.usage("r1", Timestamp::ZERO).await.unwrap();
    assert_eq!(all.len(), 5);
    let global = all.iter().find(|record| record.period_start == T0 && record.scope == Scope::Global).unwrap();
    assert_eq!(global.spent, Spent { tokens: 700, cost_usd: 0.75 }, "usage adds up");
    assert_eq!(global.limit, None);
    let build = all.iter().find(|record| record.scope == Scope::Workstream("build".into())).unwrap();
    assert_eq!((build.spent.tokens, build.limit), (0, Some(limit)));
    assert!(all.iter().any(|record| record.scope == Scope::Task(TaskId(7)) && record.spent.tokens == 200));
    let today = store.usage("r1", Timestamp(T0.0 + day)).await.unwrap();
    assert_eq!(today.len(), 1, "only periods from `since` on");
    assert_eq!(today[0].spent.tokens, 30);
    assert_eq!(store.usage("r2", Timestamp::ZERO).await.unwrap()[0].spent.tokens, 9, "plans are apart");

    // A later run of the same plan (a fresh run) shares the period's budget: its usage adds to
    // the earlier run's, and its operator's limit replaces the earlier one.
    store.create_run(new_run("r3"), Timestamp(T0.0 + 5)).await.unwrap();
    let raised = Limit { daily_tokens: Some(9000), cost_usd: Some(2.0) };
    let writes = vec![
        usage(0, Scope::Global, 300, 0.25, Vec::new()),
        Write::BudgetLimit {
            period_start: T0,
            scope: Scope::Workstream("build".into()),
            limit: raised,
            events: vec![],
        },
    ];
    store.apply("r3", T0, writes).await.unwrap();
    for run in ["r1", "r3"] {
        let plan = store.usage(run, Timestamp::ZERO).await.unwrap();
        assert_eq!(plan.len(), 5, "one record per period and scope, from {run}");
        let global = plan.iter().find(|record| record.period_start == T0 && record.scope == Scope::Global).unwrap();
        assert_eq!(global.spent, Spent { tokens: 1000, cost_usd: 1.0 }, "the plan's runs add up, from {run}");
        let build = plan.iter().find(|record| record.scope == Scope::Workstream("build".into())).unwrap();
        assert_eq!(build.limit, Some(raised), "the later run's limit, from {run}");
    }
    assert_eq!(store.usage("r2", Timestamp::ZERO).await.unwrap()[0].spent.tokens, 9, "other plans are untouched");
    let events = store.events(&EventQuery { run_id: Some("r1".into()), ..Default::default() }).await.unwrap();
    assert!(events.iter().any(|event| event.kind.name() == "BudgetThreshold"), "events go with the usage");
}

/// A firing creates its task, moves the cursor and writes `ScheduleFired` together; a firing
/// whose cursor has moved (replayed, or decided by a stale node) writes nothing.
pub async fn schedules_fire_at_most_once_per_due_time(store: impl Store) {
    store.create_run(new_run("r1"), T0).await.unwrap();
    let record = ScheduleRecord {
        run_id: "r1".into(),
        name: "nightly".into(),
        cursor: T0,
        last_fired_due: None,
        last_fired_at: None,
        last_task: None,
        paused: false,
        updated_at: T0,
    };
    store.apply("r1", T0, vec![Write::Schedule { record: record.clone(), events: vec![] }]).await.unwrap();
    assert_eq!(store.schedules("r1").await.unwrap(), vec![record.clone()]);
    let due = Timestamp(T0.0 + 60_000);
    let mut task = new_task("nightly@2023-11-14T22:14:20Z", &[]);
    task.resources.clear();
    let firing = Firing { schedule: "nightly".into(), due, expect_cursor: T0, n_due: 1, late: false, task };
    let now = Timestamp(due.0 + 5);
    let created = store.fire_schedule("r1", firing.clone(), now).await.unwrap().expect("fired");
    assert_eq!(created.key.as_deref(), Some("nightly@2023-11-14T22:14:20Z"));
    assert_eq!(created.state, TaskState::Pending);
    assert_eq!(store.fire_schedule("r1", firing, now).await.unwrap(), None, "the same due time again");
    assert_eq!(store.tasks("r1", &TaskFilter::default()).await.unwrap().len(), 1);
    let stored = store.schedules("r1").await.unwrap().remove(0);
    assert_eq!((stored.cursor, stored.last_fired_due, stored.last_task), (due, Some(due), Some(created.id)));
    assert_eq!(stored.last_fired_at, Some(now));
    let events = store.events(&EventQuery { run_id: Some("r1".into()), ..EventQuery::default() }).await.unwrap();
    let names: Vec<&str> = events.iter().map(|event| event.kind.name()).collect();
    assert_eq!(names, vec!["RunStarted", "TaskCreated", "ScheduleFired"]);
    assert_eq!(events[2].kind.task(), Some(created.id), "the event names its task");
    // Pausing is a plain write of the record.
    let paused = ScheduleRecord { paused: true, ..stored };
    let event = EventKind::SchedulePaused { schedule: "nightly".into() };
    store.apply("r1", now, vec![Write::Schedule { record: paused.clone(), events: vec![event] }]).await.unwrap();
    assert_eq!(store.schedules("r1").await.unwrap(), vec![paused]);
    assert!(store.schedules("r2").await.unwrap().is_empty());
    // A firing for a schedule the run has no record of is an error, and creates nothing.
    let stray =
        Firing { schedule: "other".into(), due, expect_cursor: T0, n_due: 1, late: false, task: new_task("x", &[]) };
    let stray = store.fire_schedule("r1", stray, now).await;
    assert_eq!(stray.map_err(|error| error.kind()).err(), Some(ErrorKind::NotFound));
    assert_eq!(store.tasks("r1", &TaskFilter::default()).await.unwrap().len(), 1);
}

pub async fn process_groups_are_recorded_and_taken(store: impl Store) {
    use crate::{ProcessOwner, ProcessRecord};
    store.create_run(new_run("r1"), T0).await.unwrap();
    let record = |task: i64, attempt: u32| ProcessRecord {
        owner: ProcessOwner::Attempt { task: TaskId(task), attempt },
        pgid: 100 + task as i32,
        host: "h".into(),
    };
    let agent = |agent: &str, generation: u64, pgid: i32| ProcessRecord {
        owner: ProcessOwner::Agent { agent: agent.into(), generation },
        pgid,
        host: "h".into(),
    };
    store.record_process("r1", record(1, 1)).await.unwrap();
    store.record_process("r1", record(2, 1)).await.unwrap();
    store.record_process("r2", record(3, 1)).await.unwrap();
    store.forget_process("r1", &record(2, 1)).await.unwrap();
    // Long-running agents' groups, by agent and start; no task is involved.
    store.record_process("r1", agent("worker", 1, 201)).await.unwrap();
    store.record_process("r1", agent("worker", 2, 202)).await.unwrap();
    store.record_process("r1", agent("pty", 1, 301)).await.unwrap();
    store.forget_process("r1", &agent("worker", 1, 201)).await.unwrap();
    // The end of an older group of the same owner does not forget a newer one.
    store.record_process("r1", agent("pty", 1, 302)).await.unwrap();
    store.forget_process("r1", &agent("pty", 1, 301)).await.unwrap();
    assert_eq!(
        store.take_processes("r1").await.unwrap(),
        vec![record(1, 1), agent("pty", 1, 302), agent("worker", 2, 202)]
    );
    assert!(store.take_processes("r1").await.unwrap().is_empty(), "taken once");
}

pub async fn messages_are_delivered_retried_and_dead_lettered(store: impl Store) {
    use crate::DeliveryOutcome;
    use baton_core::messages::{DeliveryState, INBOX_LIMIT, NewMessage, Recipient};
    store.create_run(new_run("r1"), T0).await.unwrap();
    let message = NewMessage {
        from: "operator".into(),
        to: Recipient::Broadcast,
        body: "@all hello".into(),
        data: serde_json::json!({"n": 1}),
        task: None,
        correlation_id: None,
    };
    let ids = store.send_message("r1", "m1".into(), message.clone(), vec!["a".into(), "b".into()], T0).await.unwrap();
    assert_eq!(ids.len(), 2);
    let due = store.due_deliveries("r1", &["a".to_string(), "b".to_string()], T0, 10).await.unwrap();
    assert_eq!(due.iter().map(|d| d.to.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);
    assert_eq!(due[0].data["n"], 1);
    let later = Timestamp(T0.0 + 1_000);
    store
        .settle_deliveries(
            "r1",
            vec![
                (due[0].clone(), DeliveryOutcome::Acked),
                (due[1].clone(), DeliveryOutcome::Retry { at: later, error: "busy".into() }),
            ],
            T0,
        )
        .await
        .unwrap();
    assert!(
        store.due_deliveries("r1", &["a".to_string(), "b".to_string()], T0, 10).await.unwrap().is_empty(),
        "the retry is not due yet"
    );
    let retry = store.due_deliveries("r1", &["a".to_string(), "b".to_string()], later, 10).await.unwrap();
    assert_eq!((retry.len(), retry[0].attempts), (1, 1));
    store
        .settle_deliveries("r1", vec![(retry[0].clone(), DeliveryOutcome::Dead { error: "gone".into() })], later)
        .await
        .unwrap();
    let all = store.deliveries("r1", None, 10).await.unwrap();
    assert_eq!(all.iter().map(|d| d.state).collect::<Vec<_>>(), vec![DeliveryState::Acked, DeliveryState::Dead]);
    let events = store.events(&EventQuery { run_id: Some("r1".into()), ..Default::default() }).await.unwrap();
    assert!(events.iter().any(|e| e.kind.name() == "MessageSent"));
    assert!(events.iter().any(|e| e.kind.name() == "MessageDeadLettered"));
    // An operator redelivers the dead letter: pending again, due now, tries counted afresh; a
    // delivery that is not dead, or not of the run, is left alone.
    let dead = all[1].id;
    let again = Timestamp(later.0 + 5_000);
    assert_eq!(store.redeliver("r2", None, again).await.unwrap(), Vec::<i64>::new());
    assert_eq!(store.redeliver("r1", Some(vec![all[0].id, dead]), again).await.unwrap(), vec![dead]);
    let due = store.due_deliveries("r1", &["b".to_string()], again, 10).await.unwrap();
    assert_eq!((due.len(), due[0].id, due[0].attempts, due[0].state), (1, dead, 0, DeliveryState::Pending));
    assert_eq!(store.redeliver("r1", None, again).await.unwrap(), Vec::<i64>::new(), "nothing is dead now");
    let events = store.events(&EventQuery { run_id: Some("r1".into()), ..Default::default() }).await.unwrap();
    assert_eq!(events.iter().filter(|e| e.kind.name() == "MessageRedelivered").count(), 1);
    // A full inbox refuses the message and stores nothing.
    for n in 0..INBOX_LIMIT {
        store.send_message("r1", format!("f{n}"), message.clone(), vec!["full".into()], T0).await.unwrap();
    }
    let refused = store.send_message("r1", "over".into(), message, vec!["ok".into(), "full".into()], T0).await;
    assert_eq!(refused.unwrap_err().kind(), ErrorKind::Full);
    assert!(store.deliveries("r1", Some("ok"), 10).await.unwrap().is_empty(), "nothing stored for the others either");
}

/// A topic message sent before anyone follows the topic is held for it (a pending delivery to
/// `#TOPIC`, never due to an agent) and handed whole to the first follower, due at once and in
/// its inbox from then on; a second follower gets nothing more, another run's hold is its own.
pub async fn messages_held_for_a_topic_are_handed_to_its_first_follower(store: impl Store) {
    use baton_core::messages::{DeliveryState, NewMessage, Recipient, topic_holder};
    store.create_run(new_run("r1"), T0).await.unwrap();
    store.create_run(new_run("r2"), T0).await.unwrap();
    let holder = topic_holder("reviews");
    for (run, n) in [("r1", 0), ("r1", 1), ("r2", 2)] {
        let message = NewMessage {
            from: "operator".into(),
            to: Recipient::Topic("reviews".into()),
            body: format!("review {n}"),
            data: serde_json::Value::Null,
            task: None,
            correlation_id: None,
        };
        store.send_message(run, format!("m{n}"), message, vec![holder.clone()], T0).await.unwrap();
    }
    let held = store.deliveries("r1", Some(&holder), 10).await.unwrap();
    assert_eq!(
        held.iter().map(|d| (d.to.as_str(), d.state)).collect::<Vec<_>>(),
        vec![(holder.as_str(), DeliveryState::Pending); 2]
    );
    assert!(store.due_deliveries("r1", &["a".to_string()], T0, 10).await.unwrap().is_empty());

    let later = Timestamp(T0.0 + 60_000);
    let handed = store.hand_over("r1", &holder, "a", later).await.unwrap();
    assert_eq!(handed.iter().map(|d| d.body.as_str()).collect::<Vec<_>>(), vec!["review 0", "review 1"]);
    assert!(handed.iter().all(|d| d.to == "a" && d.topic.as_deref() == Some("reviews") && d.next_attempt_at == later));
    let due = store.due_deliveries("r1", &["a".to_string()], later, 10).await.unwrap();
    assert_eq!(due.iter().map(|d| d.id).collect::<Vec<_>>(), handed.iter().map(|d| d.id).collect::<Vec<_>>());
    assert!(store.hand_over("r1", &holder, "b", later).await.unwrap().is_empty(), "handed once");
    assert!(store.deliveries("r1", Some(&holder), 10).await.unwrap().is_empty());
    assert_eq!(store.deliveries("r2", Some(&holder), 10).await.unwrap().len(), 1, "the other run's hold is its own");
}

/// An inbox holds [`INBOX_LIMIT`](baton_core::messages::INBOX_LIMIT) pending deliveries: refused
/// sends take no room, an acknowledgement or a dead letter frees one place (once, however often
/// the delivery is settled), a retry frees none, and concurrent senders never overfill it. An
/// acknowledgement records when it happened.
pub async fn inbox_room_follows_sends_acks_and_dead_letters(store: impl Store + Clone) {
    use crate::DeliveryOutcome;
    use baton_core::messages::{DeliveryState, INBOX_LIMIT, NewMessage, Recipient};
    store.create_run(new_run("r1"), T0).await.unwrap();
    let message = NewMessage {
        from: "operator".into(),
        to: Recipient::Agent("x".into()),
        body: "hello".into(),
        data: serde_json::Value::Null,
        task: None,
        correlation_id: None,
    };
    // Concurrent senders, more than the inbox holds: exactly a full inbox is stored.
    let mut senders = tokio::task::JoinSet::new();
    for n in 0..INBOX_LIMIT + 50 {
        let (store, message) = (store.clone(), message.clone());
        senders.spawn(async move { store.send_message("r1", format!("m{n}"), message, vec!["x".into()], T0).await });
    }
    let mut n_refused = 0;
    while let Some(sent) = senders.join_next().await {
        match sent.unwrap() {
            Ok(ids) => assert_eq!(ids.len(), 1),
            Err(error) => {
                assert_eq!(error.kind(), ErrorKind::Full, "{error}");
                n_refused += 1;
            }
        }
    }
    assert_eq!(n_refused, 50);
    let pending = |deliveries: &[baton_core::messages::Delivery]| {
        deliveries.iter().filter(|delivery| delivery.state == DeliveryState::Pending).count() as u64
    };
    let all = store.deliveries("r1", Some("x"), 2 * INBOX_LIMIT).await.unwrap();
    assert_eq!((all.len() as u64, pending(&all)), (INBOX_LIMIT, INBOX_LIMIT));
    let send = |id: &str, recipients: &[&str]| {
        let recipients = recipients.iter().map(|name| name.to_string()).collect();
        store.send_message("r1", id.to_string(), message.clone(), recipients, T0)
    };
    let full = |sent: crate::Result<Vec<i64>>| sent.map_err(|error| error.kind()).err() == Some(ErrorKind::Full);
    // Refused, storing nothing, also for a recipient with room.
    assert!(full(send("over", &["y", "x"]).await));
    assert!(store.deliveries("r1", Some("y"), 10).await.unwrap().is_empty());

    let due = store.due_deliveries("r1", &["x".to_string()], T0, 3).await.unwrap();
    let later = Timestamp(T0.0 + 5);
    let settle = |outcomes: Vec<(baton_core::messages::Delivery, DeliveryOutcome)>| {
        store.settle_deliveries("r1", outcomes, later)
    };
    // A retry keeps its place.
    settle(vec![(due[0].clone(), DeliveryOutcome::Retry { at: later, error: "busy".into() })]).await.unwrap();
    assert!(full(send("after-retry", &["x"]).await));
    // An acknowledgement frees one place, once, however often it is recorded.
    settle(vec![(due[1].clone(), DeliveryOutcome::Acked)]).await.unwrap();
    settle(vec![(due[1].clone(), DeliveryOutcome::Acked)]).await.unwrap();
    send("after-ack", &["x"]).await.unwrap();
    assert!(full(send("after-ack-2", &["x"]).await));
    // So does a dead letter.
    settle(vec![(due[2].clone(), DeliveryOutcome::Dead { error: "gone".into() })]).await.unwrap();
    assert!(full(send("two-places", &["x", "x"]).await), "a recipient named twice needs two places");
    send("after-dead", &["x"]).await.unwrap();
    assert!(full(send("after-dead-2", &["x"]).await));

    let all = store.deliveries("r1", Some("x"), 2 * INBOX_LIMIT).await.unwrap();
    assert_eq!(pending(&all), INBOX_LIMIT);
    let by_id = |id: i64| all.iter().find(|delivery| delivery.id == id).unwrap();
    assert_eq!((by_id(due[1].id).state, by_id(due[1].id).acked_at), (DeliveryState::Acked, Some(later)));
    assert_eq!((by_id(due[2].id).state, by_id(due[2].id).acked_at), (DeliveryState::Dead, None));
    assert_eq!(by_id(due[0].id).acked_at, None);
    // Another run's inbox of the same name is another inbox.
    store.create_run(new_run("r2"), T0).await.unwrap();
    store.send_message("r2", "elsewhere".into(), message.clone(), vec!["x".into()], T0).await.unwrap();
}

/// The audit log: ids grow, entries read back whole, and `since_id`, `actor`, `limit` and
/// `newest_first` combine. Audit entries are no run's events.
pub async fn audit_entries_are_recorded_and_queried(store: impl Store) {
    use crate::{AuditEntry, AuditQuery, NewAuditEntry};
    store.create_run(new_run("r1"), T0).await.unwrap();
    let events_before = store.events(&EventQuery::default()).await.unwrap();
    assert!(store.audit(&AuditQuery::default()).await.unwrap().is_empty());
    let entry = |n: i64, actor: &str, outcome: &str, status: u16| NewAuditEntry {
        at: Timestamp(T0.0 + n),
        actor: actor.into(),
        role: if actor == "admin" { "admin".into() } else { "agent".into() },
        action: "POST /tasks".into(),
        target: (n % 2 == 0).then(|| format!("task {n}")),
        outcome: outcome.into(),
        status,
        detail: (n == 1).then(|| serde_json::json!({"reason": "quota", "tasks": [1, 2]})),
    };
    let mut ids = Vec::new();
    for (n, actor, outcome, status) in [
        (1, "admin", "ok", 200),
        (2, "agent:builder", "denied", 403),
        (3, "admin", "error: boom", 500),
        (4, "admin", "ok", 201),
    ] {
        ids.push(store.record_audit(entry(n, actor, outcome, status)).await.unwrap());
    }
    assert!(ids.windows(2).all(|pair| pair[1] > pair[0]), "ids grow: {ids:?}");

    let all = store.audit(&AuditQuery::default()).await.unwrap();
    let first = entry(1, "admin", "ok", 200);
    assert_eq!(
        all[0],
        AuditEntry {
            id: ids[0],
            at: first.at,
            actor: first.actor,
            role: first.role,
            action: first.action,
            target: first.target,
            outcome: first.outcome,
            status: first.status,
            detail: first.detail,
        },
        "an entry reads back as recorded"
    );
    assert_eq!(all.iter().map(|entry| entry.id).collect::<Vec<_>>(), ids, "oldest first by default");
    assert_eq!((all[1].target.as_deref(), all[1].status), (Some("task 2"), 403));

    let newest = store.audit(&AuditQuery { limit: Some(2), newest_first: true, ..Default::default() }).await.unwrap();
    assert_eq!(newest.iter().map(|entry| entry.id).collect::<Vec<_>>(), vec![ids[3], ids[2]]);
    let oldest = store.audit(&AuditQuery { limit: Some(2), ..Default::default() }).await.unwrap();
    assert_eq!(oldest.iter().map(|entry| entry.id).collect::<Vec<_>>(), vec![ids[0], ids[1]]);
    let admin_since = store
        .audit(&AuditQuery { since_id: Some(ids[0]), actor: Some("admin".into()), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(admin_since.iter().map(|entry| entry.id).collect::<Vec<_>>(), vec![ids[2], ids[3]]);
    assert_eq!(admin_since[0].outcome, "error: boom");
    let builder = store.audit(&AuditQuery { actor: Some("agent:builder".into()), ..Default::default() }).await.unwrap();
    assert_eq!((builder.len(), builder[0].outcome.as_str()), (1, "denied"));
    let after_all = store.audit(&AuditQuery { since_id: Some(ids[3]), ..Default::default() }).await.unwrap();
    assert!(after_all.is_empty());
    assert_eq!(store.events(&EventQuery::default()).await.unwrap(), events_before, "auditing writes no event");

    // Pruning keeps an actor's newest entries and leaves the others' alone.
    let mut strangers = Vec::new();
    for n in 5..10 {
        strangers.push(store.record_audit(entry(n, "unauthenticated", "denied", 401)).await.unwrap());
    }
    assert_eq!(store.prune_audit("unauthenticated", 2).await.unwrap(), 3);
    assert_eq!(store.prune_audit("unauthenticated", 2).await.unwrap(), 0, "nothing more to prune");
    let left = store.audit(&AuditQuery::default()).await.unwrap();
    let left: Vec<i64> = left.iter().map(|entry| entry.id).collect();
    assert_eq!(left, [&ids[..], &strangers[3..]].concat());
}

/// A subscriber gets every event committed through the store after it subscribed, once each,
/// in sequence order with no gap (the same events [`Store::events`] reads), and an event only
/// once its write is committed: when the write returns, its events are there to receive. A
/// failed write publishes nothing.
pub async fn subscribers_get_committed_events_in_order(store: impl Store + Clone) {
    use tokio::sync::broadcast::error::TryRecvError;
    store.create_run(new_run("r1"), T0).await.unwrap();
    let mut events = store.subscribe();
    assert_eq!(events.try_recv().unwrap_err(), TryRecvError::Empty, "nothing committed before subscribing");
    let since = store.events(&EventQuery::default()).await.unwrap().last().map_or(0, |event| event.seq);

    // A write's events are received as soon as the write returns.
    let created = store.create_tasks("r1", vec![new_task("a", &[]), new_task("b", &["a"])], T0).await.unwrap();
    for task in &created {
        let event = events.try_recv().expect("a committed event is published before its write returns");
        assert_eq!((event.run_id.as_str(), &event.kind.name()), ("r1", &"TaskCreated"));
        assert_eq!(event.kind.task(), Some(task.id));
    }
    // A failed write publishes nothing.
    let bad = Write::Run {
        change: RunChange {
            state: RunState::Running,
            phase: 1,
            n_tasks: 0,
            n_finished: 0,
            ended_at: None,
            error: None,
        },
        events: vec![],
    };
    assert!(store.apply("missing", T0, vec![Write::Event(EventKind::PhaseCompleted { phase: 1 }), bad]).await.is_err());
    assert_eq!(events.try_recv().unwrap_err(), TryRecvError::Empty, "a rolled back write publishes nothing");

    // Concurrent writers: every event is received once, in sequence order.
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..4 {
        let store = store.clone();
        writers.spawn(async move {
            for n in 0..10 {
                let phase = writer * 100 + n;
                store.append_events("r1", T0, vec![EventKind::PhaseCompleted { phase }]).await.unwrap();
            }
        });
    }
    while let Some(joined) = writers.join_next().await {
        joined.unwrap();
    }
    let mut received = Vec::new();
    loop {
        match events.try_recv() {
            Ok(event) => received.push(std::sync::Arc::unwrap_or_clone(event)),
            Err(TryRecvError::Empty) => break,
            Err(other) => panic!("the subscriber missed events: {other:?}"),
        }
    }
    let stored = store.events(&EventQuery { since, ..Default::default() }).await.unwrap();
    assert_eq!(stored.len(), 2 + 40);
    assert_eq!(received, stored[2..], "the subscriber got the stored events, in order, once each");
    assert!(received.windows(2).all(|pair| pair[0].seq < pair[1].seq));
}

/// An LLM agent's transcript: entries appended in several writes come back in order, attempt
/// by attempt, each saying whose.
pub async fn transcripts_are_appended_in_order_per_attempt(store: impl Store) {
    use baton_core::transcript::{Entry, Role};
    store.create_run(new_run("r1"), T0).await.unwrap();
    let tasks = store.create_tasks("r1", vec![new_task("a", &[])], T0).await.unwrap();
    let id = tasks[0].id;
    assert!(store.transcript(id).await.unwrap().is_empty());
    let entry = |role, text: &str| Entry::new(role, text, T0);
    store.append_transcript("r1", id, 2, vec![entry(Role::User, "again")]).await.unwrap();
    store.append_transcript("r1", id, 1, vec![entry(Role::System, "sys"), entry(Role::User, "task")]).await.unwrap();
    store.append_transcript("r1", id, 1, vec![entry(Role::Assistant, "done")]).await.unwrap();
    let transcript = store.transcript(id).await.unwrap();
    let shown: Vec<(u32, &str)> =
        transcript.iter().map(|entry| (entry.attempt, entry.content.as_str().unwrap_or_default())).collect();
    assert_eq!(shown, [(1, "sys"), (1, "task"), (1, "done"), (2, "again")]);
}

pub async fn push_configs_are_kept_replaced_and_deleted(store: impl Store) {
    use crate::PushConfigRecord;
    let config = |task: i64, id: &str, owner: &str, url: &str| PushConfigRecord {
        task: TaskId(task),
        id: id.into(),
        owner: owner.into(),
        config: serde_json::json!({ "url": url, "token": "t", "authorization": "Bearer secret" }),
    };
    assert!(store.push_configs(None).await.unwrap().is_empty());
    store.put_push_config(config(2, "b", "tok-1", "http://h/1")).await.unwrap();
    store.put_push_config(config(1, "z", "tok-1", "http://h/2")).await.unwrap();
    store.put_push_config(config(2, "a", "tok-2", "http://h/3")).await.unwrap();
    let all = store.push_configs(None).await.unwrap();
    let keys: Vec<(i64, &str)> = all.iter().map(|c| (c.task.0, c.id.as_str())).collect();
    assert_eq!(keys, vec![(1, "z"), (2, "b"), (2, "a")], "by task, then in the order put");
    assert_eq!(all[0], config(1, "z", "tok-1", "http://h/2"), "kept as given");

    // The same task and id: replaced in place.
    store.put_push_config(config(2, "b", "tok-3", "http://h/4")).await.unwrap();
    let two = store.push_configs(Some(TaskId(2))).await.unwrap();
    assert_eq!(two, vec![config(2, "b", "tok-3", "http://h/4"), config(2, "a", "tok-2", "http://h/3")]);

    assert!(store.delete_push_config(TaskId(2), "b").await.unwrap());
    assert!(!store.delete_push_config(TaskId(2), "b").await.unwrap(), "gone already");
    assert!(!store.delete_push_config(TaskId(1), "a").await.unwrap(), "another task's id");
    let left: Vec<String> = store.push_configs(None).await.unwrap().into_iter().map(|c| c.id).collect();
    assert_eq!(left, vec!["z".to_string(), "a".to_string()]);
    assert!(store.push_configs(Some(TaskId(3))).await.unwrap().is_empty());
}
