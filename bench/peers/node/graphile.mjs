// graphile-worker beside Baton: `node graphile.mjs run --mode batched|defaults --n N --drain 0|1`.
//
// Workers (2 processes) are started first; then the jobs are added with `addJobs` in batches of
// `--batch` (the bulk call); the clock runs from the first add to the moment the jobs table is
// empty (every completion committed). Drain mode adds the jobs before the workers start, and
// the clock runs from the first handler start (any worker) to the table being empty.
//
// batched: graphile-worker's own performance settings (concurrentJobs 24, maxPoolSize 25, a
// local queue of 500, batched completion with no delay). defaults: the library's defaults
// (concurrentJobs 1, no local queue, one completion query per job).
import { run, makeWorkerUtils, runMigrations } from "graphile-worker";
import pg from "pg";
import { args, nowMs, sleep, startWorkers, stopWorkers, stdinClosed, report } from "./common.mjs";

const a = args();
const connectionString = a.db || "postgres://postgres@127.0.0.1:5432/test";
const mode = a.mode || "batched";

function preset() {
  const worker = { connectionString, schema: "graphile_worker", pollInterval: 2000 };
  if (mode === "batched") {
    Object.assign(worker, {
      concurrentJobs: 24,
      maxPoolSize: 25,
      localQueue: { size: 500 },
      completeJobBatchDelay: 0,
      failJobBatchDelay: 0,
    });
  }
  return { worker };
}

async function worker() {
  let firstStart = null;
  let handled = 0;
  const taskList = {
    noop: async () => {
      if (firstStart === null) firstStart = Date.now();
      handled++;
    },
  };
  const runner = await run({ preset: preset(), taskList, noHandleSignals: true, logger: quietLogger() });
  console.log("ready");
  await stdinClosed();
  await runner.stop();
  console.log(JSON.stringify({ firstStart, handled }));
  process.exit(0);
}

function quietLogger() {
  // Errors only: graphile-worker logs every job otherwise.
  return new (class {
    scope() { return this; }
    error(m) { console.error(m); }
    warn(m) { console.error(m); }
    info() {}
    debug() {}
  })();
}

async function main() {
  const n = Number(a.n || 20000);
  const batch = Number(a.batch || 500);
  const procs = Number(a.procs || 2);
  const drain = a.drain === "1";
  const pool = new pg.Pool({ connectionString, max: 2 });
  await pool.query("drop schema if exists graphile_worker cascade");
  await runMigrations({ preset: preset(), logger: quietLogger() });
  const utils = await makeWorkerUtils({ preset: preset(), logger: quietLogger() });
  const add = async () => {
    for (let i = 0; i < n; i += batch) {
      const jobs = [];
      for (let j = i; j < Math.min(n, i + batch); j++) jobs.push({ identifier: "noop", payload: { n: j } });
      await utils.addJobs(jobs);
    }
  };
  const empty = async () => {
    for (;;) {
      const { rows } = await pool.query("select exists(select 1 from graphile_worker._private_jobs) as any");
      if (!rows[0].any) return;
      await sleep(5);
    }
  };
  let workers;
  let started;
  if (drain) {
    await add();
    workers = await startWorkers(new URL(import.meta.url).pathname, procs, ["--mode", mode, "--db", connectionString]);
  } else {
    workers = await startWorkers(new URL(import.meta.url).pathname, procs, ["--mode", mode, "--db", connectionString]);
    started = Date.now();
    await add();
  }
  await empty();
  const finished = Date.now();
  const stats = await stopWorkers(workers);
  if (drain) started = Math.min(...stats.map((s) => s.firstStart).filter((x) => x !== null));
  const handled = stats.reduce((sum, s) => sum + (s.handled || 0), 0);
  await utils.release();
  await pool.end();
  report(`graphile-worker ${mode}`, n, (finished - started) / 1000, { handled, drain });
}

if (process.argv[2] === "worker") await worker();
else await main();
