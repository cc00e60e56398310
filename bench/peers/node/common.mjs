// Shared by the peer drivers: arguments, child worker processes, timing, the JSON line out.
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";

export function args() {
  const out = {};
  const argv = process.argv.slice(3);
  for (let i = 0; i < argv.length; i += 2) out[argv[i].replace(/^--/, "")] = argv[i + 1];
  return out;
}

export const nowMs = () => Number(process.hrtime.bigint()) / 1e6;
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Starts `n` copies of this script as `worker` processes and waits for each to print `ready`. */
export async function startWorkers(script, n, extra) {
  const workers = [];
  for (let i = 0; i < n; i++) {
    const child = spawn(process.execPath, [script, "worker", ...extra], { stdio: ["pipe", "pipe", "inherit"] });
    const lines = createInterface({ input: child.stdout });
    const queue = [];
    const waiters = [];
    let closed = false;
    lines.on("line", (line) => (waiters.length ? waiters.shift()(line) : queue.push(line)));
    lines.on("close", () => {
      closed = true;
      waiters.splice(0).forEach((w) => w(null));
    });
    // After the end, every read answers null (a read then must not wait forever: Node would
    // exit with the promise unsettled).
    const next = () =>
      queue.length ? Promise.resolve(queue.shift()) : closed ? Promise.resolve(null) : new Promise((r) => waiters.push(r));
    const w = { child, next, stopping: false };
    // A worker that dies before it is told to stop fails the run at once, rather than leaving
    // the driver waiting for completions that will not come.
    child.on("exit", (code, signal) => {
      if (!w.stopping) {
        console.error(`a worker process exited early (code ${code}, signal ${signal})`);
        process.exit(1);
      }
    });
    workers.push(w);
  }
  for (const w of workers) {
    const line = await w.next();
    if (line !== "ready") throw new Error(`a worker did not start: ${line}`);
  }
  return workers;
}

/** Tells the workers to stop (stdin closes) and returns what each printed last (a JSON line). */
export async function stopWorkers(workers) {
  const out = [];
  for (const w of workers) {
    w.stopping = true;
    w.child.stdin.end();
  }
  for (const w of workers) {
    let last = null;
    for (;;) {
      const line = await w.next();
      if (line === null) break;
      last = line;
    }
    out.push(last ? JSON.parse(last) : {});
    await new Promise((r) => (w.child.exitCode !== null ? r() : w.child.on("exit", r)));
  }
  return out;
}

/** In a worker: resolves when the parent closes stdin. */
export function stdinClosed() {
  return new Promise((resolve) => {
    process.stdin.on("data", () => {});
    process.stdin.on("end", resolve);
    process.stdin.on("close", resolve);
  });
}

/**
 * The figure of one run. `firstStartMs` (wall clock, ms since the epoch) is the first handler
 * start across the workers: the start of the clock in drain mode.
 */
export function report(system, n, seconds, extra = {}) {
  console.log(JSON.stringify({ system, n, seconds, per_second: n / seconds, ...extra }));
}
