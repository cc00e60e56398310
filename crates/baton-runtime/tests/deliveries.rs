//! Messages delivered to real worker processes (`examples/workers/worker.py`) by the post
//! office on a SQLite store: a worker that declares `message/deliver_batch` gets a round's
//! messages in one request and acknowledges them in its answer, the ones it refuses (and only
//! those) are delivered again, and a worker that does not declare it still gets one
//! `message/deliver` per message. Messages sent through the post office are handed to its
//! delivery loop, one stored by someone else is read from the store, and none is delivered twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use baton_core::Timestamp;
use baton_core::config;
use baton_core::messages::{Delivery, DeliveryState, NewMessage, OPERATOR, Recipient};
use baton_runtime::agent::{AgentContext, AgentRuntime};
use baton_runtime::postoffice::PostOffice;
use baton_runtime::process::ProcessEnv;
use baton_runtime::{Clock, engine};
use baton_store::sqlite::SqliteStore;
use baton_store::{NewRun, Store};

const WORKER_PY: &str = include_str!("../../../examples/workers/worker.py");

const PLAN: &str = r#"
[orchestration]
name = "deliveries"

[[agents]]
name = "batcher"
mode = "worker"
command = ["python3", "worker.py", "--refuse", "refuse"]

[[agents]]
name = "single"
mode = "worker"
command = ["python3", "worker.py", "--no-batches"]
"#;

const RUN_ID: &str = "deliveries-run";

fn message(to: &str, body: &str) -> NewMessage {
    NewMessage {
        from: OPERATOR.to_string(),
        to: Recipient::Agent(to.to_string()),
        body: body.to_string(),
        data: serde_json::Value::Null,
        task: None,
        correlation_id: None,
    }
}

/// Waits (at most 30 s) until `done` holds for the run's deliveries, and returns them by body.
async fn deliveries_when(
    store: &SqliteStore,
    done: impl Fn(&HashMap<String, Delivery>) -> bool,
) -> HashMap<String, Delivery> {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let all = store.deliveries(RUN_ID, None, 100).await.expect("the store answers");
            let by_body: HashMap<String, Delivery> =
                all.into_iter().map(|delivery| (delivery.body.clone(), delivery)).collect();
            if done(&by_body) {
                return by_body;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the deliveries get there within 30 s")
}

#[tokio::test]
async fn batches_are_acknowledged_per_message_and_workers_without_them_get_single_deliveries() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("worker.py"), WORKER_PY).expect("the worker is written");
    let env = BTreeMap::from([
        ("PATH".to_string(), std::env::var("PATH").expect("PATH is set")),
        ("HOME".to_string(), dir.path().display().to_string()),
    ]);
    let plan = config::load("baton.toml", PLAN, &env).unwrap_or_else(|error| panic!("{error}"));
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("baton.db"), baton_store::sqlite::Options::default()).expect("a store"),
    );
    store
        .create_run(
            NewRun {
                id: RUN_ID.into(),
                name: "deliveries".into(),
                n_phases: 1,
                owner: "test".into(),
                owner_pid: std::process::id(),
                owner_until: Timestamp(i64::MAX),
            },
            Clock::system().now(),
        )
        .await
        .expect("the run is created");
    let factory = engine::process_runtimes(ProcessEnv {
        base_dir: dir.path().to_path_buf(),
        log_dir: dir.path().join("logs"),
        env,
        registry: None,
        api: None,
        mcp_servers: Vec::new(),
    });
    let (events, _events) = mpsc::unbounded_channel();
    let (requests, _requests) = mpsc::unbounded_channel();
    let mut runtimes: HashMap<String, Arc<dyn AgentRuntime>> = HashMap::new();
    for spec in &plan.agents {
        let runtime = factory(spec);
        runtime
            .start(AgentContext { run_id: RUN_ID.into(), events: events.clone(), requests: requests.clone() })
            .await
            .unwrap_or_else(|error| panic!("{} does not start: {error}", spec.name));
        runtimes.insert(spec.name.clone(), runtime);
    }
    let post = PostOffice::new(
        Arc::clone(&store) as Arc<dyn Store>,
        RUN_ID.into(),
        Arc::new(runtimes.clone()),
        Clock::system(),
    );
    // Stored before the post office runs, so that its first round has all of them.
    for (to, body) in
        [("batcher", "one"), ("batcher", "please refuse"), ("batcher", "two"), ("single", "three"), ("single", "four")]
    {
        post.send(message(to, body)).await.expect("the message is stored");
    }
    // Stored without the post office (as `baton send` from another process does): it finds it
    // in the store, and the messages handed to it are not delivered a second time from there.
    store
        .send_message(RUN_ID, "direct".into(), message("single", "five"), vec!["single".into()], Clock::system().now())
        .await
        .expect("the message is stored");
    let cancel = CancellationToken::new();
    let delivering = tokio::spawn(post.clone().run(cancel.clone()));

    // The refused message is tried again (a second attempt recorded) while the others are
    // acknowledged, each after one delivery.
    let seen = deliveries_when(&store, |by_body| {
        by_body.len() == 6
            && by_body["please refuse"].attempts >= 2
            && by_body["four"].state == DeliveryState::Acked
            && by_body["five"].state == DeliveryState::Acked
    })
    .await;
    for body in ["one", "two", "three", "four", "five"] {
        let delivery = &seen[body];
        assert_eq!(delivery.state, DeliveryState::Acked, "{body}: {delivery:?}");
        assert_eq!(delivery.attempts, 1, "{body} was delivered once: {delivery:?}");
    }
    let refused = &seen["please refuse"];
    assert_eq!(refused.state, DeliveryState::Pending);
    assert_eq!(refused.error.as_deref(), Some("refused on purpose"));

    // A topic message sent while nobody follows the topic is held, not refused, and handed to
    // the first agent that follows it; the next one goes straight to the follower.
    let to_topic = |body: &str| NewMessage { to: Recipient::Topic("reviews".into()), ..message("x", body) };
    post.send(to_topic("held review")).await.expect("a topic message nobody follows yet is held");
    let held = deliveries_when(&store, |by_body| by_body.contains_key("held review")).await;
    assert_eq!(held["held review"].to, "#reviews");
    post.subscribe("single", "reviews");
    post.send(to_topic("followed review")).await.expect("the topic has a follower");
    let seen = deliveries_when(&store, |by_body| {
        ["held review", "followed review"].iter().all(|body| by_body[*body].state == DeliveryState::Acked)
    })
    .await;
    for body in ["held review", "followed review"] {
        assert_eq!((seen[body].to.as_str(), seen[body].attempts), ("single", 1), "{body}: {:?}", seen[body]);
    }

    cancel.cancel();
    delivering.await.expect("the post office stops");
    for runtime in runtimes.values() {
        runtime.stop().await;
    }
    let batcher_log = std::fs::read_to_string(dir.path().join("logs/batcher.log")).expect("the batcher's log");
    assert!(batcher_log.contains("batch of 3 message(s)"), "{batcher_log}");
    assert_eq!(batcher_log.matches("message from operator: one").count(), 1, "{batcher_log}");
    assert_eq!(batcher_log.matches("message from operator: two").count(), 1, "{batcher_log}");
    assert!(batcher_log.matches("refusing: please refuse").count() >= 2, "{batcher_log}");
    let single_log = std::fs::read_to_string(dir.path().join("logs/single.log")).expect("the single worker's log");
    assert!(!single_log.contains("batch of"), "{single_log}");
    assert!(single_log.contains("message from operator: three"), "{single_log}");
    assert!(single_log.contains("message from operator: four"), "{single_log}");
    assert_eq!(single_log.matches("message from operator: five").count(), 1, "{single_log}");
}
