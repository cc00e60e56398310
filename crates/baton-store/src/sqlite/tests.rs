use super::migrations::MIGRATIONS;
use super::*;

/// The plan SQLite chooses for `sql`, one line per step.
fn plan(conn: &Connection, sql: &str, values: &[&dyn rusqlite::ToSql]) -> String {
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let rows = stmt.query_map(values, |row| row.get::<_, String>(3)).unwrap();
    rows.collect::<rusqlite::Result<Vec<_>>>().unwrap().join("\n")
}

/// A store written by a baton from before the event indexes and the audit log opens, is
/// brought up to date, and keeps its events readable with the new filters.
#[tokio::test]
async fn a_store_of_schema_5_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.db");
    {
        let conn = Connection::open(&path).unwrap();
        for migration in &MIGRATIONS[..5] {
            conn.execute_batch(migration).unwrap();
        }
        conn.pragma_update(None, "user_version", 5).unwrap();
        let kind = EventKind::TaskClaimed { task: TaskId(1), agent: "builder".into(), attempt: 1 };
        conn.execute(
            "INSERT INTO events (run_id, at, type, task_id, agent, data) VALUES ('r1', 1, ?1, 1, 'builder', ?2)",
            params![kind.name(), to_json(&kind)],
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path, Options::default()).unwrap();
    let version: i64 =
        store.read(|conn| Ok(conn.pragma_query_value(None, "user_version", |row| row.get(0))?)).await.unwrap();
    assert_eq!(version, MIGRATIONS.len() as i64);
    let query = EventQuery { kinds: vec!["TaskClaimed".into()], agent: Some("builder".into()), ..Default::default() };
    assert_eq!(store.events(&query).await.unwrap().len(), 1);
    let entry = NewAuditEntry {
        at: Timestamp(1),
        actor: "admin".into(),
        role: "admin".into(),
        action: "task.cancel".into(),
        target: None,
        outcome: "ok".into(),
        status: 200,
        detail: None,
    };
    let id = store.record_audit(entry).await.unwrap();
    assert_eq!(store.audit(&AuditQuery::default()).await.unwrap()[0].id, id);
}

/// A store from before commands went through the API loses its command table, commands
/// left unread in it included: no engine takes them any more.
#[tokio::test]
async fn the_command_table_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.db");
    let before = MIGRATIONS.iter().position(|migration| migration.contains("DROP TABLE control")).unwrap();
    {
        let conn = Connection::open(&path).unwrap();
        for migration in &MIGRATIONS[..before] {
            conn.execute_batch(migration).unwrap();
        }
        conn.pragma_update(None, "user_version", before as i64).unwrap();
        conn.execute(
            "INSERT INTO control (run_id, command, created_at) VALUES ('r1', '{\"command\":\"retry-task\",\"task\":1}', 1)",
            [],
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path, Options::default()).unwrap();
    let tables: i64 = store
        .read(|conn| {
            Ok(conn.query_row("SELECT count(*) FROM sqlite_master WHERE name LIKE 'control%'", [], |row| row.get(0))?)
        })
        .await
        .unwrap();
    assert_eq!(tables, 0, "neither the table nor its index is left");
}

/// A store bricked before totals saturated: its usage rows hold REALs (an overflowed sum)
/// and worse. Reading the plan's budgets clamps and reports them instead of failing, and
/// the next report turns the column back into an integer.
#[tokio::test]
async fn usage_rows_holding_floats_from_an_overflow_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.db");
    let store = SqliteStore::open(&path, Options::default()).unwrap();
    let run = NewRun {
        id: "r1".into(),
        name: "plan".into(),
        n_phases: 1,
        owner: "n".into(),
        owner_pid: 1,
        owner_until: Timestamp(1),
    };
    store.create_run(run, Timestamp(0)).await.unwrap();
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "INSERT INTO usage (run_id, period_start, scope_kind, scope_name, tokens, cost_usd) VALUES \
             ('r1', 0, 'global', '', 1.8446744073709552e19, 0.5), \
             ('r1', 0, 'agent', 'coder', -3.5, 'lots'), \
             ('r1', 0, 'workstream', 'build', 'many', -1.0);
             INSERT INTO usage (run_id, period_start, scope_kind, scope_name, has_limit, limit_tokens, limit_cost_usd) \
             VALUES ('r1', 0, 'agent', 'tester', 1, 9.9e99, 2.0);",
        )
        .unwrap();
    }
    let records = store.usage("r1", Timestamp::ZERO).await.unwrap();
    let spent = |scope: Scope| records.iter().find(|record| record.scope == scope).unwrap().spent;
    assert_eq!(spent(Scope::Global), Spent { tokens: u64::MAX, cost_usd: 0.5 });
    assert_eq!(spent(Scope::Agent("coder".into())), Spent { tokens: 0, cost_usd: 0.0 });
    assert_eq!(spent(Scope::Workstream("build".into())), Spent { tokens: 0, cost_usd: 0.0 });
    let tester = records.iter().find(|record| record.scope == Scope::Agent("tester".into())).unwrap();
    assert_eq!(tester.limit, Some(Limit { daily_tokens: Some(u64::MAX), cost_usd: Some(2.0) }));

    let more = Write::Usage {
        period_start: Timestamp(0),
        scope: Scope::Global,
        spent: Spent { tokens: 5, cost_usd: 0.0 },
        events: vec![],
    };
    store.apply("r1", Timestamp(0), vec![more]).await.unwrap();
    let kind: String = store
        .read(|conn| {
            Ok(conn.query_row("SELECT typeof(tokens) FROM usage WHERE scope_kind = 'global'", [], |row| row.get(0))?)
        })
        .await
        .unwrap();
    assert_eq!(kind, "integer");
    let records = store.usage("r1", Timestamp::ZERO).await.unwrap();
    let global = records.iter().find(|record| record.scope == Scope::Global).unwrap();
    assert_eq!(global.spent.tokens, i64::MAX as u64, "the REAL was cast back to the largest count");
}

#[test]
fn event_filters_seek_by_index() {
    let mut conn = Connection::open_in_memory().unwrap();
    migrate(&mut conn).unwrap();
    let by_agent =
        plan(&conn, "SELECT seq FROM events WHERE seq > ? AND agent = ? ORDER BY seq LIMIT ?", &[&0, &"builder", &10]);
    assert!(by_agent.contains("events_by_agent"), "{by_agent}");
    let by_type = plan(
        &conn,
        "SELECT seq FROM events WHERE seq > ? AND type IN (SELECT value FROM json_each(?)) ORDER BY seq LIMIT ?",
        &[&0, &"[\"TaskCompleted\"]", &10],
    );
    assert!(by_type.contains("events_by_type"), "{by_type}");
}
