"""Celery beside Baton: `python celery_driver.py run --port P --n N --drain 0|1`.

Two worker processes (`celery worker`, the threads pool, concurrency 8 each) on a Redis broker,
`task_acks_late` (a message is acknowledged after the task returned) and no result backend:
a job is done when its acknowledgement removed it from the broker's `unacked` hash, so the
clock runs from the first `apply_async` to the queue and that hash being empty. Celery has no
bulk publish call; the jobs are sent one by one. Drain mode sends first and times from the
first task call to the end.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import redis
from celery import Celery

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import args, report  # noqa: E402

PORT = int(os.environ.get("PEERS_PORT") or args().get("port", "6379"))
DB = 3
app = Celery("baton_peers", broker=f"redis://127.0.0.1:{PORT}/{DB}")
app.conf.update(task_acks_late=True, task_ignore_result=True, worker_prefetch_multiplier=4,
                task_default_queue="bench", worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)
STATS = os.environ.get("PEERS_STATS")


@app.task(name="noop")
def noop(n):
    if STATS:
        # One line per call would be too much: only the first call's time, and a count at the end.
        if not os.path.exists(STATS + f".{os.getpid()}"):
            with open(STATS + f".{os.getpid()}", "w") as f:
                f.write(str(time.time() * 1000))


def main():
    a = args()
    n = int(a.get("n", 20000))
    drain = a.get("drain") == "1"
    r = redis.Redis(host="127.0.0.1", port=PORT, db=DB)
    r.flushdb()
    stats = tempfile.mkdtemp()
    env = dict(os.environ, PEERS_PORT=str(PORT), PEERS_STATS=os.path.join(stats, "first"))
    here = os.path.dirname(os.path.abspath(__file__))

    def start():
        procs = []
        for i in range(2):
            p = subprocess.Popen([sys.executable, "-m", "celery", "-A", "celery_driver", "worker", "-P", "threads", "-c", "8",
                                  "-Q", "bench", "-n", f"peer{i}@%h", "--without-gossip", "--without-mingle",
                                  "--without-heartbeat", "-l", "INFO"], cwd=here, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            procs.append(p)
        for p in procs:
            while True:
                line = p.stderr.readline()
                if not line:
                    sys.exit("a celery worker did not start")
                if " ready." in line:
                    break
        # The rest of their log is not read: sent to nowhere so that it never blocks them.
        return procs

    def send():
        for j in range(n):
            noop.apply_async((j,))

    if drain:
        send()
        procs = start()
    else:
        procs = start()
        started = time.time()
        send()
    while r.llen("bench") or r.hlen("unacked"):
        time.sleep(0.005)
    finished = time.time()
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=30)
    if drain:
        firsts = [float(open(os.path.join(stats, f)).read()) for f in os.listdir(stats)]
        started = min(firsts) / 1000
    report("Celery", n, finished - started, drain=drain)


if __name__ == "__main__":
    main()
