#!/usr/bin/env python3
"""Runs Baton and its peers in alternating rounds and prints medians and ratios.

Started by `bench/peers/run`, which installs the peers, builds Baton and starts the fsync'd
Redis. The definition is the same for every system: its workers are already running (2
processes for the peers, `baton bench --http`'s worker processes for Baton), N no-op jobs are
created with the system's bulk call in batches of 500, and the clock runs from the first create
to the last completion recorded durably (as durably as the system records anything).
`--modes drain` queues the N jobs first and times only the processing: from the first job
handed to a worker to the last completion recorded.
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
NODE = os.path.join(HERE, "node")
PY = os.path.join(HERE, "python")

ALL = ["baton", "graphile-batched", "graphile-defaults", "bullmq-fsync", "bullmq-memory", "celery", "dramatiq"]
DEFAULT = ["baton", "graphile-batched", "graphile-defaults", "bullmq-fsync", "bullmq-memory"]


def sh(cmd, timeout=10):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def redis_config(port, key):
    out = subprocess.run(["redis-cli", "-p", str(port), "config", "get", key], capture_output=True, text=True).stdout
    lines = out.split("\n")
    return lines[1] if len(lines) > 1 else "?"


def pg_setting(name):
    return sh(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-Atc", f"show {name}"]) or "?"


def versions():
    out = {}
    lock = json.load(open(os.path.join(NODE, "package-lock.json")))
    for name in ["graphile-worker", "bullmq"]:
        out[name] = lock["packages"].get(f"node_modules/{name}", {}).get("version", "?")
    out["postgresql"] = pg_setting("server_version")
    out["redis"] = sh(["redis-server", "--version"]).split(" v=")[-1].split(" ")[0]
    out["node"] = sh(["node", "--version"])
    if os.environ.get("PEERS_PYTHON"):
        for name in ["celery", "dramatiq"]:
            out[name] = sh([os.environ["PEERS_PYTHON"], "-c", f"import {name}; print({name}.__version__)"]) or "?"
    out["baton"] = sh([os.environ["BATON_BIN"], "--version"])
    return out


class System:
    def __init__(self, name, label, durability, cmd, parse):
        self.name, self.label, self.durability, self.cmd, self.parse = name, label, durability, cmd, parse


def last_json(stdout):
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            return json.loads(line)
    raise ValueError("no JSON line in the output")


def systems(args):
    baton = os.environ["BATON_BIN"]
    node = shutil.which("node")
    fsync_port = args.redis_fsync_port
    out = {}

    def baton_cmd(n, drain):
        cmd = [baton, "bench", "--http", "--tasks", str(n), "--repeats", "1", "--json", "--latency-seconds", "0",
               "--dir", os.path.join(args.work_dir, "baton"), "--workers", str(args.baton_workers)]
        return cmd + args.baton_args.split() + (["--drain"] if drain else [])

    def baton_parse(stdout):
        report = json.loads(stdout[stdout.index("{"):])
        run = report["runs"][0]
        return {"seconds": run["seconds"], "per_second": run["tasks_per_second"]}

    out["baton"] = System("baton", f"Baton `bench --http` ({args.baton_workers} worker processes)",
                          "SQLite synchronous=FULL: each transition fsync'd before it is acknowledged",
                          baton_cmd, baton_parse)
    pg = f"PostgreSQL fsync={pg_setting('fsync')}, synchronous_commit={pg_setting('synchronous_commit')}"
    for mode in ["batched", "defaults"]:
        out[f"graphile-{mode}"] = System(
            f"graphile-{mode}", f"graphile-worker {mode} (2 processes)", pg,
            lambda n, drain, mode=mode: [node, os.path.join(NODE, "graphile.mjs"), "run", "--mode", mode, "--n", str(n),
                                         "--drain", "1" if drain else "0"],
            last_json)
    out["bullmq-fsync"] = System(
        "bullmq-fsync", "BullMQ (2 processes, concurrency 100 each)",
        f"Redis appendonly={redis_config(fsync_port, 'appendonly')}, appendfsync={redis_config(fsync_port, 'appendfsync')}",
        lambda n, drain: [node, os.path.join(NODE, "bullmq.mjs"), "run", "--port", str(fsync_port), "--n", str(n),
                          "--drain", "1" if drain else "0", "--prefix", "bench-fsync"],
        last_json)
    mem = args.redis_memory_port
    if sh(["redis-cli", "-p", str(mem), "ping"]) == "PONG":
        out["bullmq-memory"] = System(
            "bullmq-memory", "BullMQ, Redis without persistence",
            f"Redis appendonly={redis_config(mem, 'appendonly')}, save='{redis_config(mem, 'save')}' (not durable)",
            lambda n, drain: [node, os.path.join(NODE, "bullmq.mjs"), "run", "--port", str(mem), "--n", str(n),
                              "--drain", "1" if drain else "0", "--prefix", f"baton-peers-{os.getpid()}"],
            last_json)
    py = os.environ.get("PEERS_PYTHON")
    if py:
        for name in ["celery", "dramatiq"]:
            out[name] = System(
                name, f"{name} (2 processes)",
                f"Redis broker appendfsync={redis_config(fsync_port, 'appendfsync')}",
                lambda n, drain, name=name: [py, os.path.join(PY, f"{name}_driver.py"), "run", "--port", str(fsync_port),
                                             "--n", str(n), "--drain", "1" if drain else "0"],
                last_json)
    return out


def run_group(cmd, timeout):
    """Runs a driver in a process group of its own; on a time-out the whole group (its worker
    processes too) is killed. Returns its stdout."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    if proc.returncode != 0:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        raise RuntimeError(f"exit {proc.returncode}: {stderr.strip()[-600:]}")
    return stdout


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20000, help="jobs per run (default 20,000)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported (default 3)")
    p.add_argument("--systems", default=",".join(DEFAULT), help=f"comma-separated, of {', '.join(ALL)}")
    p.add_argument("--modes", default="throughput,drain", help="throughput, drain, or both (default both)")
    p.add_argument("--baton-workers", type=int, default=4, help="Baton's worker processes (default 4)")
    p.add_argument("--baton-args", default="", help="more arguments for `baton bench --http`, e.g. '--pipeline 2'")
    p.add_argument("--timeout", type=float, default=0, help="seconds a single run may take (default: from N)")
    p.add_argument("--json-out", help="also write every run's figures to this file")
    p.add_argument("--python", action="store_true", help="(for `run`) install Celery and Dramatiq too")
    p.add_argument("--redis-fsync-port", type=int, required=True, help=argparse.SUPPRESS)
    p.add_argument("--redis-memory-port", type=int, default=6379, help="the Redis without persistence (default 6379)")
    p.add_argument("--work-dir", required=True, help=argparse.SUPPRESS)
    args = p.parse_args()

    known = systems(args)
    chosen = [s.strip() for s in args.systems.split(",") if s.strip()]
    for name in chosen:
        if name not in ALL:
            sys.exit(f"unknown system {name}; known: {', '.join(ALL)}")
    skipped = [name for name in chosen if name not in known]
    for name in skipped:
        print(f"note: {name} is not available here (its Redis or --python install is missing); skipped", file=sys.stderr)
    chosen = [name for name in chosen if name in known]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    timeout = args.timeout or max(120.0, args.n / 100.0)

    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()), file=sys.stderr)
    results = {(mode, name): [] for mode in modes for name in chosen}
    failures = {}
    for rnd in range(args.rounds):
        for mode in modes:
            # Alternate: each round starts one system further on.
            order = chosen[rnd % len(chosen):] + chosen[:rnd % len(chosen)]
            for name in order:
                system = known[name]
                cmd = system.cmd(args.n, mode == "drain")
                started = time.monotonic()
                try:
                    stdout = run_group(cmd, timeout)
                    figure = system.parse(stdout)
                except (RuntimeError, ValueError, subprocess.TimeoutExpired) as error:
                    failures.setdefault((mode, name), []).append(str(error))
                    print(f"round {rnd + 1} {mode:10} {name:18} FAILED: {error}", file=sys.stderr)
                    continue
                results[(mode, name)].append(figure)
                print(f"round {rnd + 1} {mode:10} {name:18} {figure['per_second']:9.0f} jobs/s "
                      f"({figure['seconds']:.2f} s; {time.monotonic() - started:.1f} s with set-up)", file=sys.stderr)

    print()
    print(f"N = {args.n:,} no-op jobs, {args.rounds} alternating round(s), medians; ratio = Baton's median / the system's")
    for mode in modes:
        print()
        print(f"mode: {mode}" + (" (jobs queued first; from the first job handed to a worker to the last completion)"
                                 if mode == "drain" else " (workers running; from the first create to the last completion)"))
        baton = results.get((mode, "baton"), [])
        baton_median = statistics.median([r["per_second"] for r in baton]) if baton else None
        print(f"| {'system':45} | {'jobs/s (median)':>15} | {'runs':>4} | {'Baton ÷ it':>10} | durability |")
        print(f"|{'-' * 47}|{'-' * 17}|{'-' * 6}|{'-' * 12}|---|")
        for name in chosen:
            runs = results[(mode, name)]
            system = known[name]
            if not runs:
                print(f"| {system.label:45} | {'failed':>15} | {0:>4} | {'':>10} | {system.durability} |")
                continue
            med = statistics.median([r["per_second"] for r in runs])
            ratio = f"{baton_median / med:.2f}×" if baton_median else "-"
            print(f"| {system.label:45} | {med:15,.0f} | {len(runs):>4} | {ratio:>10} | {system.durability} |")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"n": args.n, "rounds": args.rounds, "versions": versions(),
                       "runs": {f"{m}/{n}": r for (m, n), r in results.items()},
                       "failures": {f"{m}/{n}": e for (m, n), e in failures.items()}}, f, indent=2)
    if failures:
        print(f"\n{sum(len(v) for v in failures.values())} run(s) failed; see above", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
