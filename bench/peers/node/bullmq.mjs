// BullMQ beside Baton: `node bullmq.mjs run --port P --n N --drain 0|1 [--label L]`.
//
// Workers (2 processes, `concurrency` 100 each) are started first; then the jobs are added with
// `addBulk` in batches of `--batch`; the clock runs from the first add to the moment the queue
// counts N completed jobs (each completion is a Redis write: durable per write when the server
// runs with `appendfsync always`). Drain mode adds the jobs before the workers start and times
// from the first handler start to the last completion.
import { Queue, Worker } from "bullmq";
import { args, sleep, startWorkers, stopWorkers, stdinClosed, report } from "./common.mjs";

const a = args();
const connection = { host: "127.0.0.1", port: Number(a.port || 6379), maxRetriesPerRequest: null };
const name = a.queue || "baton-peers";
const prefix = a.prefix || "bench";

async function worker() {
  let firstStart = null;
  let handled = 0;
  const w = new Worker(
    name,
    async () => {
      if (firstStart === null) firstStart = Date.now();
      handled++;
    },
    { connection, prefix, concurrency: Number(a.concurrency || 100), autorun: true },
  );
  await w.waitUntilReady();
  console.log("ready");
  await stdinClosed();
  await w.close();
  console.log(JSON.stringify({ firstStart, handled }));
  process.exit(0);
}

async function main() {
  const n = Number(a.n || 20000);
  const batch = Number(a.batch || 500);
  const procs = Number(a.procs || 2);
  const drain = a.drain === "1";
  const queue = new Queue(name, { connection, prefix });
  await queue.obliterate({ force: true });
  const add = async () => {
    for (let i = 0; i < n; i += batch) {
      const jobs = [];
      for (let j = i; j < Math.min(n, i + batch); j++) jobs.push({ name: "noop", data: { n: j } });
      await queue.addBulk(jobs);
    }
  };
  const done = async () => {
    while ((await queue.getCompletedCount()) < n) await sleep(5);
  };
  const extra = ["--port", String(connection.port), "--queue", name, "--prefix", prefix, "--concurrency", String(a.concurrency || 100)];
  let workers;
  let started;
  if (drain) {
    await add();
    workers = await startWorkers(new URL(import.meta.url).pathname, procs, extra);
  } else {
    workers = await startWorkers(new URL(import.meta.url).pathname, procs, extra);
    started = Date.now();
    await add();
  }
  await done();
  const finished = Date.now();
  const stats = await stopWorkers(workers);
  if (drain) started = Math.min(...stats.map((s) => s.firstStart).filter((x) => x !== null));
  const handled = stats.reduce((sum, s) => sum + (s.handled || 0), 0);
  await queue.obliterate({ force: true });
  await queue.close();
  report(a.label || "BullMQ", n, (finished - started) / 1000, { handled, drain });
}

if (process.argv[2] === "worker") await worker();
else await main();
