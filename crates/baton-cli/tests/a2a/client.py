"""Baton's A2A server, driven by the official A2A Python SDK (a2a-sdk 1.x) as a client.

Usage: client.py BASE_URL OPERATOR_TOKEN VIEWER_TOKEN SLEEPER_TOKEN

SLEEPER_TOKEN is an agent token, of the agent `sleeper`.

The plan has an agent `echo` (capability `echo`: its result is the task it was given) and an
agent `sleeper` (it works until it is cancelled). Each check prints a line; the first failure
raises, and the process exits non-zero with the traceback.
"""

import asyncio
import sys
import uuid

import httpx
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct, Value

from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.types import (
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    SubscribeToTaskRequest,
    TaskState,
)
from a2a.utils.errors import (
    TaskNotCancelableError,
    TaskNotFoundError,
    UnsupportedOperationError,
)

BASE, OPERATOR, VIEWER, SLEEPER = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
DEADLINE = 60.0


def check(what, condition, detail=""):
    if not condition:
        raise AssertionError(f"{what}: {detail}")
    print(f"ok: {what}", flush=True)


def message(text, data=None):
    parts = [Part(text=text)]
    if data is not None:
        value = Value()
        json_format.ParseDict(data, value)
        parts.append(Part(data=value))
    return Message(message_id=str(uuid.uuid4()), role=Role.ROLE_USER, parts=parts)


def request(text, data=None, requires=None):
    metadata = Struct()
    if requires:
        metadata.update({"requires": requires})
    return SendMessageRequest(message=message(text, data), metadata=metadata)


def http(token):
    return httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=DEADLINE)


async def client_for(card, token, **config):
    return ClientFactory(ClientConfig(httpx_client=http(token), **config)).create(card)


async def until(what, client, task_id, states):
    """Polls GetTask until the task is in one of `states` (what a polling client does)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while True:
        task = await client.get_task(GetTaskRequest(id=task_id))
        if task.status.state in states:
            return task
        if loop.time() > deadline:
            raise AssertionError(f"{what}: task {task_id} still {TaskState.Name(task.status.state)}")
        await asyncio.sleep(0.05)


async def main():
    async with httpx.AsyncClient(timeout=DEADLINE) as anonymous:
        # The card is open: a client reads it before it has a token.
        card = await A2ACardResolver(anonymous, BASE).get_agent_card()
        check("the card names the plan", card.name == "a2a-served", card.name)
        interface = card.supported_interfaces[0]
        check(
            "the card's interface is JSON-RPC 1.0 at /a2a",
            (interface.protocol_binding, interface.protocol_version, interface.url)
            == ("JSONRPC", "1.0", f"{BASE}/a2a"),
            str(interface),
        )
        check("the card streams", card.capabilities.streaming and not card.capabilities.push_notifications)
        skills = {skill.id: list(skill.tags) for skill in card.skills}
        check("a skill per agent", skills == {"echo": ["echo"], "sleeper": ["sleep"]}, str(skills))
        check("bearer security", "bearer" in card.security_schemes, str(card.security_schemes))
        sleeper_card = await A2ACardResolver(anonymous, BASE).get_agent_card(
            relative_card_path="/a2a/agents/sleeper/.well-known/agent-card.json"
        )
        check(
            "an agent's own card",
            sleeper_card.name == "sleeper" and sleeper_card.supported_interfaces[0].url == f"{BASE}/a2a/agents/sleeper",
            str(sleeper_card.supported_interfaces),
        )

        # JSON-RPC errors for bad requests, without the SDK.
        headers = {"Authorization": f"Bearer {OPERATOR}"}
        raw = await anonymous.post(f"{BASE}/a2a", content=b"{not json", headers={**headers, "A2A-Version": "1.0"})
        check("invalid JSON is -32700", raw.json()["error"]["code"] == -32700, raw.text)
        body = {"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "1"}}
        raw = await anonymous.post(f"{BASE}/a2a", json=body, headers=headers)
        check("no A2A-Version (0.3) is -32009", raw.json()["error"]["code"] == -32009, raw.text)
        body = {"jsonrpc": "2.0", "id": 2, "method": "tasks/get", "params": {}}
        raw = await anonymous.post(f"{BASE}/a2a", json=body, headers={**headers, "A2A-Version": "1.0"})
        check("an unknown method is -32601", raw.json()["error"]["code"] == -32601, raw.text)
        versioned = {**headers, "A2A-Version": "1.0"}
        raw = await anonymous.post(f"{BASE}/a2a", json={"jsonrpc": "2.0", "id": 3}, headers=versioned)
        check("a request without a method is -32600", raw.json()["error"]["code"] == -32600, raw.text)
        body = {"jsonrpc": "2.0", "id": 4, "method": "SendMessage", "params": {"message": {"role": "ROLE_USER"}}}
        raw = await anonymous.post(f"{BASE}/a2a", json=body, headers=versioned)
        check("a message without an id or parts is -32602", raw.json()["error"]["code"] == -32602, raw.text)
        body = {"jsonrpc": "2.0", "id": 6, "method": "CreateTaskPushNotificationConfig",
                "params": {"taskId": "1", "url": "http://127.0.0.1:9/hook"}}
        raw = await anonymous.post(f"{BASE}/a2a", json=body, headers=versioned)
        check("no push_hosts: push configs are -32003", raw.json()["error"]["code"] == -32003, raw.text)
        body = {"jsonrpc": "2.0", "id": 5, "method": "GetTask", "params": {"id": "1"}}
        raw = await anonymous.post(f"{BASE}/a2a", json=body)
        check("no token is 401", raw.status_code == 401, raw.text)

    # SendMessage, blocking (the default): the answer is the finished task, its result an artifact.
    client = await client_for(card, OPERATOR, streaming=False)
    responses = [r async for r in client.send_message(request("Echo this\nplease", {"n": 7}, ["echo"]))]
    task = responses[-1].task
    check("a blocking send answers the completed task", task.status.state == TaskState.TASK_STATE_COMPLETED, str(task))
    result = json_format.MessageToDict(task.artifacts[0].parts[0].data)
    check("the result is the artifact", result["title"] == "Echo this" and result["input"]["n"] == 7, str(result))
    check("the message is the history", task.history[0].parts[0].text == "Echo this\nplease", str(task.history))
    first_id = task.id

    # SendMessage returning at once, then GetTask polled until the task completes.
    polling = await client_for(card, OPERATOR, streaming=False, polling=True)
    responses = [r async for r in polling.send_message(request("Echo later", {"n": 8}, ["echo"]))]
    task = responses[-1].task
    check("return immediately", task.status.state != TaskState.TASK_STATE_UNSPECIFIED and task.id, str(task))
    done = await until("polled", polling, task.id, {TaskState.TASK_STATE_COMPLETED})
    check("GetTask sees it complete", json_format.MessageToDict(done.artifacts[0].parts[0].data)["input"]["n"] == 8)
    no_history = await polling.get_task(GetTaskRequest(id=task.id, history_length=0))
    check("historyLength 0", len(no_history.history) == 0, str(no_history))

    # SendStreamingMessage: the task, updates, the artifact, then the final status.
    streaming = await client_for(card, OPERATOR, streaming=True)
    events = [r async for r in streaming.send_message(request("Echo streamed", {"n": 9}, ["echo"]))]
    kinds = [r.WhichOneof("payload") for r in events]
    check("the stream begins with the task", kinds[0] == "task", str(kinds))
    check("the stream has the artifact", "artifact_update" in kinds, str(kinds))
    last = events[-1]
    check(
        "the stream ends with the completed status",
        kinds[-1] == "status_update" and last.status_update.status.state == TaskState.TASK_STATE_COMPLETED,
        str(events),
    )

    # The sleeper, through its own card: subscribe, cancel, and the stream ends canceled.
    sleeper = await client_for(sleeper_card, OPERATOR, streaming=False, polling=True)
    responses = [r async for r in sleeper.send_message(request("Sleep"))]
    sleeping = responses[-1].task
    await until("working", sleeper, sleeping.id, {TaskState.TASK_STATE_WORKING})
    subscriber = await client_for(sleeper_card, OPERATOR, streaming=True)
    stream = subscriber.subscribe(SubscribeToTaskRequest(id=sleeping.id))
    first = await stream.__anext__()
    check("a subscription begins with the task", first.WhichOneof("payload") == "task", str(first))
    canceled = await sleeper.cancel_task(CancelTaskRequest(id=sleeping.id))
    check("CancelTask", canceled.status.state == TaskState.TASK_STATE_CANCELED, str(canceled))
    rest = [r async for r in stream]
    check(
        "the subscription ends canceled",
        rest and rest[-1].status_update.status.state == TaskState.TASK_STATE_CANCELED,
        str(rest),
    )
    try:
        await sleeper.cancel_task(CancelTaskRequest(id=sleeping.id))
        check("a second cancel is refused", False)
    except TaskNotCancelableError:
        check("a second cancel is TaskNotCancelable (-32002)", True)
    try:
        await subscriber.subscribe(SubscribeToTaskRequest(id=sleeping.id)).__anext__()
        check("subscribing to an ended task is refused", False)
    except UnsupportedOperationError:
        check("subscribing to an ended task is UnsupportedOperation (-32004)", True)
    try:
        await sleeper.get_task(GetTaskRequest(id=first_id))
        check("the sleeper's endpoint hides the echo's task", False)
    except TaskNotFoundError:
        check("an agent's endpoint sees its own tasks only", True)
    try:
        await client.get_task(GetTaskRequest(id="999999"))
        check("an unknown task is refused", False)
    except TaskNotFoundError:
        check("an unknown task is TaskNotFound (-32001)", True)

    # ListTasks: newest first, filtered by state, paged.
    listed = await client.list_tasks(ListTasksRequest())
    check("ListTasks lists all four", listed.total_size == 4 and len(listed.tasks) == 4, str(listed.total_size))
    completed = await client.list_tasks(ListTasksRequest(status=TaskState.TASK_STATE_COMPLETED, page_size=2))
    check(
        "ListTasks by state, a page at a time",
        completed.total_size == 3 and len(completed.tasks) == 2 and completed.next_page_token,
        str(completed),
    )
    rest = await client.list_tasks(
        ListTasksRequest(status=TaskState.TASK_STATE_COMPLETED, page_size=2, page_token=completed.next_page_token)
    )
    check("the last page", len(rest.tasks) == 1 and rest.tasks[0].id == first_id and not rest.next_page_token, str(rest))

    # A viewer reads but may not send.
    viewer = await client_for(card, VIEWER, streaming=False)
    seen = await viewer.get_task(GetTaskRequest(id=first_id))
    check("a viewer reads a task", seen.id == first_id)
    try:
        [r async for r in viewer.send_message(request("Not allowed", requires=["echo"]))]
        check("a viewer's message is refused", False)
    except Exception as error:  # noqa: BLE001 - the SDK raises its generic error for -32000
        check("a viewer's message is refused", "viewer role" in str(error) and "-32000" in str(error), str(error))
    try:
        await viewer.cancel_task(CancelTaskRequest(id=first_id))
        check("a viewer's cancel is refused", False)
    except TaskNotCancelableError:
        check("a viewer's cancel is refused", False, "the task's state was checked before the caller")
    except Exception as error:  # noqa: BLE001
        check("a viewer's cancel is refused", "role" in str(error), str(error))

    # An agent's token may make a task another agent runs without reading it: a blocking
    # SendMessage answers at once with the task as made, rather than wait for what it cannot see.
    async with httpx.AsyncClient(timeout=DEADLINE) as raw_client:
        body = {
            "jsonrpc": "2.0", "id": 7, "method": "SendMessage",
            "params": {
                "message": {"messageId": str(uuid.uuid4()), "role": "ROLE_USER", "parts": [{"text": "Echo for sleeper"}]},
                "metadata": {"requires": ["echo"]},
            },
        }
        headers = {"Authorization": f"Bearer {SLEEPER}", "A2A-Version": "1.0"}
        raw = await raw_client.post(f"{BASE}/a2a", json=body, headers=headers)
        answer = raw.json()
        check(
            "an agent's message for another agent answers at once",
            answer.get("result", {}).get("task", {}).get("status", {}).get("state") == "TASK_STATE_SUBMITTED",
            raw.text,
        )
    print("all A2A client checks passed", flush=True)


asyncio.run(main())
