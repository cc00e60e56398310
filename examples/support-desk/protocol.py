"""The worker side of Baton's agent protocol, shared by the support desk's three agents.

Baton talks to a worker with JSON-RPC 2.0, one message per line on stdin/stdout
(docs/agent-protocol.md). `Worker.run()` reads Baton's messages, answers `initialize` and
`shutdown`, runs each `task/assign` and `message/deliver` (or `message/deliver_batch`, which it
declares) in a thread (so that a handler can itself send requests to Baton and wait for the
answer), and sends a heartbeat every few seconds. Standard library only. Anything meant for people goes to stderr: the agent's log.
"""

import json
import os
import sys
import threading

HEARTBEAT_SECONDS = 2.0


class RpcError(Exception):
    """Baton answered one of our requests with an error."""


class TaskFailed(Exception):
    """Raised by a task handler: this attempt failed, with this reason (Baton retries it)."""


class Worker:
    def __init__(self, on_task=None, on_message=None):
        self.name = os.environ.get("BATON_AGENT", "worker")
        self.on_task = on_task  # task dict -> result (any JSON)
        self.on_message = on_message  # message dict -> None; returning acknowledges it
        self._out = threading.Lock()
        self._next_id = 0
        self._pending = {}  # request id -> (threading.Event, response dict)

    # --- sending -------------------------------------------------------------------------

    def _write(self, message):
        message["jsonrpc"] = "2.0"
        line = json.dumps(message, separators=(",", ":"))
        with self._out:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def notify(self, method, params):
        self._write({"method": method, "params": params})

    def request(self, method, params, timeout=30):
        """Sends a request and waits for Baton's answer: its result, or RpcError."""
        with self._out:
            self._next_id += 1
            request_id = self._next_id
        done = threading.Event()
        self._pending[request_id] = (done, {})
        self._write({"id": request_id, "method": method, "params": params})
        if not done.wait(timeout):
            self._pending.pop(request_id, None)
            raise RpcError(f"{method}: no answer within {timeout} s")
        response = self._pending.pop(request_id)[1]
        if "error" in response:
            raise RpcError(response["error"].get("message", "error"))
        return response.get("result")

    def log(self, text):
        print(f"[{self.name}] {text}", file=sys.stderr, flush=True)

    def send_message(self, to, body, data=None, task_id=None, correlation_id=None):
        params = {"to": to, "body": body}
        if data is not None:
            params["data"] = data
        if task_id is not None:
            params["task_id"] = task_id
        if correlation_id is not None:
            params["correlation_id"] = correlation_id
        return self.request("message/send", params)["message_id"]

    def report_usage(self, input_tokens, output_tokens, task_id=None):
        params = {"input_tokens": input_tokens, "output_tokens": output_tokens}
        if task_id is not None:
            params["task_id"] = task_id
        self.notify("usage/report", params)

    def create_tasks(self, tasks, parent=None):
        params = {"tasks": tasks}
        if parent is not None:
            params["task_id"] = parent
        return self.request("task/create", params)["task_ids"]

    # --- receiving -----------------------------------------------------------------------

    def _answer(self, request_id, handler, params):
        try:
            self._write({"id": request_id, "result": handler(params)})
        except Exception as error:  # TaskFailed, RpcError, or a bug: this attempt failed
            self.log(f"{type(error).__name__}: {error}")
            self._write({"id": request_id, "error": {"code": 1, "message": str(error)}})

    def _answer_batch(self, request_id, messages):
        """`message/deliver_batch`: each message is handled (and acknowledged or refused) on its
        own; one that raises is redelivered later, the others are acknowledged."""
        acked, errors = [], {}
        for delivered in messages:
            try:
                self.on_message(delivered)
                acked.append(delivered["message_id"])
            except Exception as error:
                self.log(f"message {delivered.get('message_id')}: {type(error).__name__}: {error}")
                errors[delivered.get("message_id")] = str(error)
        self._write({"id": request_id, "result": {"acked": acked, "errors": errors}})

    def _heartbeat(self):
        stop = threading.Event()
        while not stop.wait(HEARTBEAT_SECONDS):
            self.notify("heartbeat", {})

    def run(self):
        threading.Thread(target=self._heartbeat, daemon=True).start()
        for line in sys.stdin:
            try:
                message = json.loads(line)
            except ValueError:
                self.log(f"not JSON: {line.strip()[:80]}")
                continue
            method = message.get("method")
            params = message.get("params") or {}
            if method is None:  # the answer to one of our requests
                waiting = self._pending.get(message.get("id"))
                if waiting:
                    waiting[1].update(message)
                    waiting[0].set()
                elif "error" in message:
                    self.log(f"baton says: {message['error'].get('message')}")
            elif method == "initialize":
                self.log(f"started as {params.get('agent')} in run {params.get('run_id')}")
                # `deliver_batch`: Baton sends each round's messages in one request.
                result = {"name": self.name, "protocol_version": "1", "deliver_batch": self.on_message is not None}
                self._write({"id": message["id"], "result": result})
            elif method == "task/assign" and self.on_task:
                threading.Thread(target=self._answer, args=(message["id"], self.on_task, params), daemon=True).start()
            elif method == "message/deliver" and self.on_message:
                threading.Thread(target=self._answer, args=(message["id"], self.on_message, params),
                                 daemon=True).start()
            elif method == "message/deliver_batch" and self.on_message:
                batch = params.get("messages") or []
                threading.Thread(target=self._answer_batch, args=(message["id"], batch), daemon=True).start()
            elif method == "task/cancel":
                self.log(f"task {params.get('task_id')} cancelled ({params.get('reason')})")
            elif method == "shutdown":
                self._write({"id": message["id"], "result": {}})
                self.log("shutting down")
                return
            elif "id" in message:
                self._write({"id": message["id"], "error": {"code": -32601, "message": f"unknown method `{method}`"}})


def tokens(text):
    """A rough token count, about four characters a token, as a tokenizer would give."""
    return max(1, (len(text) + 3) // 4)
