"""Baton's A2A push notifications, driven by the official A2A Python SDK (a2a-sdk 1.x).

Usage: push.py BASE_URL OPERATOR_TOKEN [--restart]

With --restart: sets a config on a task of `sleeper`, prints `restart now`, reads the restarted
server's base URL from stdin, and checks that the config is still listed and that the webhook
hears the task's cancel.

The plan allows push notifications to 127.0.0.1 only (`[a2a] push_hosts`) and has the agents
`echo` and `sleeper` of client.py. A webhook receiver (http.server on port 0, in a thread)
records what it is posted; the checks wait on it with a deadline, never a fixed sleep.
"""

import asyncio
import json
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
from google.protobuf.struct_pb2 import Struct

from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.types import (
    AuthenticationInfo,
    CancelTaskRequest,
    DeleteTaskPushNotificationConfigRequest,
    GetTaskPushNotificationConfigRequest,
    ListTaskPushNotificationConfigsRequest,
    Message,
    Part,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    TaskPushNotificationConfig,
    TaskState,
)
from a2a.utils.errors import InvalidParamsError

BASE, OPERATOR = sys.argv[1], sys.argv[2]
RESTART = "--restart" in sys.argv[3:]
DEADLINE = 60.0


def check(what, condition, detail=""):
    if not condition:
        raise AssertionError(f"{what}: {detail}")
    print(f"ok: {what}", flush=True)


class Hook:
    """The webhook: every POST's headers and JSON body, in order of arrival."""

    def __init__(self):
        self.posts = []
        self.changed = threading.Condition()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"null")
                with hook.changed:
                    hook.posts.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    hook.changed.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for_state(self, path, state):
        """The posts to `path` up to the first that says the task reached `state`."""

        def reached():
            for _, _, body in self.posts_to(path):
                status = (body.get("statusUpdate") or body.get("task") or {}).get("status", {})
                if status.get("state") == state:
                    return True
            return False

        with self.changed:
            if not self.changed.wait_for(reached, timeout=DEADLINE):
                raise AssertionError(f"the webhook {path} never heard {state}: {self.posts_to(path)}")
            return self.posts_to(path)

    def posts_to(self, path):
        return [post for post in self.posts if post[0] == path]


def request(text, requires, configuration=None):
    metadata = Struct()
    metadata.update({"requires": requires})
    message = Message(message_id=str(uuid.uuid4()), role=Role.ROLE_USER, parts=[Part(text=text)])
    return SendMessageRequest(message=message, metadata=metadata, configuration=configuration)


async def client_at(base):
    http = httpx.AsyncClient(headers={"Authorization": f"Bearer {OPERATOR}"}, timeout=DEADLINE)
    card = await A2ACardResolver(http, base).get_agent_card()
    return ClientFactory(ClientConfig(httpx_client=http, streaming=False)).create(card)


async def across_a_restart():
    hook = Hook()
    client = await client_at(BASE)
    responses = [
        r
        async for r in client.send_message(
            request("Sleep across a restart", ["sleep"], SendMessageConfiguration(return_immediately=True))
        )
    ]
    sleeping = responses[-1].task.id if responses[-1].HasField("task") else responses[-1][0].id
    await client.create_task_push_notification_config(
        TaskPushNotificationConfig(
            task_id=sleeping,
            id="kept",
            url=f"{hook.url}/kept",
            token="kept-token",
            authentication=AuthenticationInfo(scheme="Bearer", credentials="kept-secret"),
        )
    )
    print("restart now", flush=True)
    base = sys.stdin.readline().strip()
    client = await client_at(base)
    listed = await client.list_task_push_notification_configs(ListTaskPushNotificationConfigsRequest(task_id=sleeping))
    check(
        "the config is still listed after the restart",
        [(config.id, config.url, config.token) for config in listed.configs] == [("kept", f"{hook.url}/kept", "kept-token")],
        str(listed),
    )
    await client.cancel_task(CancelTaskRequest(id=sleeping))
    posts = hook.wait_for_state("/kept", "TASK_STATE_CANCELED")
    headers = posts[-1][1]
    check("the restarted server delivers with the config's token", headers.get("x-a2a-notification-token") == "kept-token", str(headers))
    check("and its authentication", headers.get("authorization") == "Bearer kept-secret", str(headers))
    hook.server.shutdown()
    print("all A2A push restart checks passed", flush=True)


async def main():
    if RESTART:
        return await across_a_restart()
    hook = Hook()
    http = httpx.AsyncClient(headers={"Authorization": f"Bearer {OPERATOR}"}, timeout=DEADLINE)
    card = await A2ACardResolver(http, BASE).get_agent_card()
    check("the card says it pushes", card.capabilities.push_notifications, str(card.capabilities))
    client = ClientFactory(ClientConfig(httpx_client=http, streaming=False)).create(card)

    # A message with a push config: the webhook hears the task through to completed, with the
    # config's token and authentication.
    push = TaskPushNotificationConfig(
        url=f"{hook.url}/echo",
        token="echo-token",
        authentication=AuthenticationInfo(scheme="Bearer", credentials="hook-secret"),
    )
    configuration = SendMessageConfiguration(task_push_notification_config=push, return_immediately=True)
    responses = [r async for r in client.send_message(request("Echo, and tell my hook", ["echo"], configuration))]
    task_id = responses[-1].task.id if responses[-1].HasField("task") else responses[-1][0].id
    posts = hook.wait_for_state("/echo", "TASK_STATE_COMPLETED")
    headers = posts[0][1]
    check("the webhook gets the config's token", headers.get("x-a2a-notification-token") == "echo-token", str(headers))
    check("and its authentication", headers.get("authorization") == "Bearer hook-secret", str(headers))
    bodies = [body for _, _, body in posts]
    check("every notification is of the task", all(task_id in json.dumps(body) for body in bodies), str(bodies))
    kinds = [next(iter(body)) for body in bodies]
    check("the result comes as an artifact before the end", "artifactUpdate" in kinds, str(kinds))
    last = bodies[-1].get("statusUpdate") or bodies[-1].get("task")
    check("the last notification is completed", last["status"]["state"] == "TASK_STATE_COMPLETED", str(bodies[-1]))

    # A config set on a running task: listed, read, and it hears the task's cancel.
    responses = [
        r
        async for r in client.send_message(
            request("Sleep, then be cancelled", ["sleep"], SendMessageConfiguration(return_immediately=True))
        )
    ]
    sleeping = responses[-1].task.id if responses[-1].HasField("task") else responses[-1][0].id
    created = await client.create_task_push_notification_config(
        TaskPushNotificationConfig(task_id=sleeping, id="mine", url=f"{hook.url}/sleep", token="sleep-token")
    )
    check("a config is created with its id", (created.id, created.task_id) == ("mine", sleeping), str(created))
    got = await client.get_task_push_notification_config(GetTaskPushNotificationConfigRequest(task_id=sleeping, id="mine"))
    check("and read back", got.url == f"{hook.url}/sleep" and got.token == "sleep-token", str(got))
    listed = await client.list_task_push_notification_configs(ListTaskPushNotificationConfigsRequest(task_id=sleeping))
    check("and listed", [config.id for config in listed.configs] == ["mine"], str(listed))
    await client.cancel_task(CancelTaskRequest(id=sleeping))
    hook.wait_for_state("/sleep", "TASK_STATE_CANCELED")
    check("the webhook hears the cancel", True)
    await client.delete_task_push_notification_config(
        DeleteTaskPushNotificationConfigRequest(task_id=sleeping, id="mine")
    )
    listed = await client.list_task_push_notification_configs(ListTaskPushNotificationConfigsRequest(task_id=sleeping))
    check("a deleted config is gone", len(listed.configs) == 0, str(listed))

    # A webhook on a host the config does not allow is refused, saying so.
    try:
        await client.create_task_push_notification_config(
            TaskPushNotificationConfig(task_id=sleeping, url="http://hooks.example.com/x")
        )
        raise AssertionError("a webhook on a host not allowed was accepted")
    except InvalidParamsError as error:
        check("a host not allowed is refused", "push_hosts" in str(error), str(error))
    try:
        await client.send_message(
            request(
                "Never made",
                ["echo"],
                SendMessageConfiguration(task_push_notification_config=TaskPushNotificationConfig(url="http://10.9.9.9/x")),
            )
        ).__anext__()
        raise AssertionError("a message with a webhook on a host not allowed was accepted")
    except InvalidParamsError as error:
        check("and so is a message with one", "10.9.9.9" in str(error), str(error))

    hook.server.shutdown()
    print("all A2A push checks passed", flush=True)


asyncio.run(main())
