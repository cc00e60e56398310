"""Dramatiq beside Baton: `python dramatiq_driver.py run --port P --n N --drain 0|1`.

Two worker processes (8 threads each) on a Redis broker; messages are enqueued one by one
(Dramatiq has no bulk enqueue); a message is done when its ack deletes it from the queue's
`.msgs` hash (after the actor returned), so the clock runs from the first enqueue to that hash
being empty. Drain mode enqueues first and times from the first actor call to the hash empty.
"""
import os
import subprocess
import sys
import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import args, report  # noqa: E402

A = args()
PORT = int(A.get("port", os.environ.get("PEERS_PORT", "6379")))
NS = "baton-peers-dramatiq"
broker = RedisBroker(host="127.0.0.1", port=PORT, namespace=NS)
dramatiq.set_broker(broker)
first_start = None
handled = 0


@dramatiq.actor(queue_name="bench", max_retries=0)
def noop(n):
    global first_start, handled
    if first_start is None:
        first_start = time.time()
    handled += 1


def worker():
    w = dramatiq.Worker(broker, worker_threads=8)
    w.start()
    print("ready", flush=True)
    sys.stdin.read()
    w.stop()
    print(f'{{"firstStart": {first_start * 1000 if first_start else "null"}, "handled": {handled}}}', flush=True)


def main():
    import json
    n = int(A.get("n", 20000))
    drain = A.get("drain") == "1"
    r = redis.Redis(host="127.0.0.1", port=PORT)
    for key in r.scan_iter(f"{NS}:*"):
        r.delete(key)

    def start():
        procs = [subprocess.Popen([sys.executable, __file__, "worker", "--port", str(PORT)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True) for _ in range(2)]
        for p in procs:
            line = p.stdout.readline().strip()
            if line != "ready":
                sys.exit(f"a dramatiq worker did not start: {line!r}")
        return procs

    def enqueue():
        for j in range(n):
            noop.send(j)

    if drain:
        enqueue()
        procs = start()
    else:
        procs = start()
        started = time.time()
        enqueue()
    while r.hlen(f"{NS}:bench.msgs") or r.llen(f"{NS}:bench"):
        time.sleep(0.005)
    finished = time.time()
    stats = []
    for p in procs:
        out, _ = p.communicate("", timeout=60)
        stats.append(json.loads(out.strip().splitlines()[-1]))
    if drain:
        started = min(s["firstStart"] for s in stats if s["firstStart"]) / 1000
    report("Dramatiq", n, finished - started, handled=sum(s["handled"] for s in stats), drain=drain)


if __name__ == "__main__":
    worker() if sys.argv[1] == "worker" else main()
