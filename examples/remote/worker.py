#!/usr/bin/env python3
"""A remote Baton worker: claims its agent's tasks over HTTP, renews their leases while it
works, and hands in results. Standard library only.

    BATON_URL=http://127.0.0.1:8080 BATON_AGENT=summarizer python3 worker.py [--once]

With `[auth]` on the server, give it an agent token: BATON_TOKEN=$(baton token create --role
agent --agent summarizer). With --once it exits when no task comes within the wait.
"""

import json
import os
import sys
import threading
import urllib.error
import urllib.request

URL = os.environ.get("BATON_URL", "http://127.0.0.1:8080").rstrip("/")
AGENT = os.environ.get("BATON_AGENT", "summarizer")
TOKEN = os.environ.get("BATON_TOKEN")


def call(path, body):
    headers = {"content-type": "application/json"}
    if TOKEN:
        headers["authorization"] = "Bearer " + TOKEN
    request = urllib.request.Request(URL + path, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=70) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def heartbeat(held, stop):
    """Renews the leases of the attempts in `held` every few seconds until `stop` is set."""
    while not stop.wait(5):
        if held:
            call("/agent/heartbeat", {"agent": AGENT, "tasks": list(held.values())})


def work(task):
    numbers = task["input"]["numbers"]
    return {"count": len(numbers), "total": sum(numbers), "mean": round(sum(numbers) / len(numbers), 2)}


def main():
    once = "--once" in sys.argv
    held, stop = {}, threading.Event()
    threading.Thread(target=heartbeat, args=(held, stop), daemon=True).start()
    while True:
        status, claimed = call("/agent/claim", {"agent": AGENT, "max": 4, "wait_ms": 5000 if once else 30000})
        if status != 200:
            print(f"claim refused ({status}): {claimed['error']['message']}", file=sys.stderr)
            return 1
        if not claimed["tasks"] and once:
            stop.set()
            return 0
        for claim in claimed["tasks"]:
            task, attempt = claim["task"], claim["attempt"]
            held[task["id"]] = {"task": task["id"], "attempt": attempt}
            call(f"/agent/tasks/{task['id']}/progress", {"agent": AGENT, "attempt": attempt, "message": "summarizing"})
            try:
                path, body = f"/agent/tasks/{task['id']}/complete", {"agent": AGENT, "attempt": attempt, "result": work(task)}
            except Exception as error:  # a failed task is data, not a crash of the worker
                path, body = f"/agent/tasks/{task['id']}/fail", {"agent": AGENT, "attempt": attempt, "error": str(error)}
            status, answer = call(path, body)
            held.pop(task["id"], None)
            if status == 200:
                print(f"task {task['id']} `{task['title']}`: {answer['state']}", file=sys.stderr)
            else:  # 409: its lease expired and the task went back to the queue
                print(f"task {task['id']}: refused: {answer['error']['message']}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
