#!/usr/bin/env python3
"""A Baton worker agent in Python, standard library only.

Baton starts it once and talks to it with JSON-RPC 2.0, one message per line, on stdin and
stdout (see docs/agent-protocol.md). It runs each assigned task in a thread, reports progress,
may create sub-tasks, reports token usage, and sends a heartbeat every few seconds so that
Baton knows it is alive. Anything it prints for people goes to stderr (the agent's log).

What a task does here is driven by its input, so the examples and tests can exercise the
protocol: {"steps": N} reports N progress steps; {"fail": "why"} fails the task;
{"subtasks": ["title" or {task}, ...]} creates sub-tasks; {"tokens": N} reports usage;
{"send": {"to": "agent", "body": "..."}} sends a message; {"lease": "file:X"} holds a resource
lease while the task works. A message whose body contains "ping" is answered with "pong" to its
sender. Messages come one per `message/deliver`, or several per `message/deliver_batch`, which
it declares in its answer to `initialize`.

Flags for tests: --crash-on-start (exit after `initialize`), --crash-once FILE (the same, the
first time only: FILE remembers), --go-silent-after N (stop heartbeating and answering after N
tasks), --garbage (send malformed messages at start), --no-batches (do not declare
`message/deliver_batch`), --refuse WORD (in a batch, refuse the messages whose body contains
WORD: they are delivered again).
"""

import itertools
import json
import os
import sys
import threading
import time

HEARTBEAT_SECONDS = float(os.environ.get("WORKER_HEARTBEAT_SECONDS", "2"))

out_lock = threading.Lock()
silent = threading.Event()
next_id = 1000
pending = {}  # id -> (event, reply dict) for requests we send to Baton
pong_ids = itertools.count(5000)


def send(message):
    """Writes one message as one line on stdout."""
    if silent.is_set():
        return
    message["jsonrpc"] = "2.0"
    with out_lock:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def log(text):
    print(f"[worker {os.environ.get('BATON_AGENT', '?')}] {text}", file=sys.stderr, flush=True)


def request(method, params):
    """Sends a request to Baton and waits for its response."""
    global next_id
    with out_lock:
        next_id += 1
        request_id = next_id
    done = threading.Event()
    pending[request_id] = (done, {})
    send({"id": request_id, "method": method, "params": params})
    done.wait(30)
    return pending.pop(request_id)[1]


def run_task(request_id, task):
    task_input = task.get("input") or {}
    task_id = task["id"]
    if "lease" in task_input:
        reply = request("resource/acquire", {"resource": task_input["lease"], "ttl_ms": 30000})
        log(f"lease on {task_input['lease']}: {reply.get('result') or reply.get('error')}")
    steps = int(task_input.get("steps", 1))
    for step in range(steps):
        time.sleep(float(task_input.get("step_seconds", 0.05)))
        send({"method": "task/progress", "params": {"task_id": task_id, "fraction": (step + 1) / steps,
                                                     "message": f"step {step + 1}/{steps}"}})
    if "tokens" in task_input:
        send({"method": "usage/report", "params": {"task_id": task_id, "input_tokens": task_input["tokens"],
                                                    "output_tokens": task_input["tokens"] // 2}})
    if task_input.get("subtasks"):
        reply = request("task/create", {"task_id": task_id, "tasks": [
            sub if isinstance(sub, dict) else {"title": sub, "input": {"steps": 1}}
            for sub in task_input["subtasks"]]})
        log(f"created sub-tasks: {reply}")
    if "send" in task_input:
        reply = request("message/send", dict(task_input["send"], task_id=task_id))
        log(f"sent a message: {reply.get('result') or reply.get('error')}")
    if "lease" in task_input:
        request("resource/release", {"resource": task_input["lease"]})
    if "fail" in task_input:
        send({"id": request_id, "error": {"code": 1, "message": task_input["fail"]}})
        return
    send({"id": request_id, "result": {"task": task["key"] or task_id, "attempt": task["attempt"],
                                        "summary": f"{task['title']}: done"}})


def receive_message(params):
    log(f"message from {params['from']}: {params['body']}")
    if "ping" in params["body"]:
        send({"id": next(pong_ids), "method": "message/send",
              "params": {"to": params["from"], "body": "pong", "correlation_id": params["message_id"]}})


def heartbeat():
    while True:
        time.sleep(HEARTBEAT_SECONDS)
        send({"method": "heartbeat", "params": {}})


def main():
    crash_on_start = "--crash-on-start" in sys.argv
    if "--crash-once" in sys.argv:
        marker = sys.argv[sys.argv.index("--crash-once") + 1]
        crash_on_start = not os.path.exists(marker)
        if crash_on_start:
            open(marker, "w").close()
    silent_after = None
    if "--go-silent-after" in sys.argv:
        silent_after = int(sys.argv[sys.argv.index("--go-silent-after") + 1])
    n_tasks = 0
    threading.Thread(target=heartbeat, daemon=True).start()
    for line in sys.stdin:
        message = json.loads(line)
        method = message.get("method")
        if method is None:  # a response to one of our requests
            waiting = pending.get(message.get("id"))
            if waiting:
                waiting[1].update(message)
                waiting[0].set()
            elif "error" in message:
                log(f"baton says: {message['error']['message']}")
            continue
        params = message.get("params") or {}
        if method == "initialize":
            log(f"initialized as {params['agent']} with {params['capabilities']}")
            # `deliver_batch`: several messages may come in one `message/deliver_batch`.
            send({"id": message["id"], "result": {"name": "python-example-worker", "protocol_version": "1",
                                                  "deliver_batch": "--no-batches" not in sys.argv}})
            if crash_on_start:
                log("crashing on purpose")
                sys.exit(3)
            if "--garbage" in sys.argv:
                with out_lock:
                    sys.stdout.write("this is not json\n")
                    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": 7, "method": "no/such/method"}) + "\n")
                    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": 99999, "result": {}}) + "\n")
                    too_many = {"input_tokens": 9223372036854775807}
                    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": 8, "method": "usage/report", "params": too_many}) + "\n")
                    sys.stdout.write("x" * 2_000_000 + "\n")
                    sys.stdout.flush()
        elif method == "task/assign":
            n_tasks += 1
            if silent_after is not None and n_tasks > silent_after:
                log("going silent")
                silent.set()
                continue
            threading.Thread(target=run_task, args=(message["id"], params), daemon=True).start()
        elif method == "message/deliver":
            receive_message(params)
            send({"id": message["id"], "result": {}})
        elif method == "message/deliver_batch":
            log(f"batch of {len(params['messages'])} message(s)")
            acked, errors = [], {}
            for delivered in params["messages"]:
                if "--refuse" in sys.argv and sys.argv[sys.argv.index("--refuse") + 1] in delivered["body"]:
                    log(f"refusing: {delivered['body']}")
                    errors[delivered["message_id"]] = "refused on purpose"
                    continue
                receive_message(delivered)
                acked.append(delivered["message_id"])
            send({"id": message["id"], "result": {"acked": acked, "errors": errors}})
        elif method == "task/cancel":
            log(f"asked to cancel task {params.get('task_id')}")
        elif method == "shutdown":
            send({"id": message["id"], "result": {}})
            log("shutting down")
            return


if __name__ == "__main__":
    main()
