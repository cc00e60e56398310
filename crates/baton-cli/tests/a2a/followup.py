"""Follow-up messages to a Baton task, with the official A2A Python SDK (a2a-sdk 1.x).

Usage:
  followup.py create BASE_URL OPERATOR_TOKEN
  followup.py answer BASE_URL OPERATOR_TOKEN VIEWER_TOKEN TASK_ID

`create` sends a message for the terminal agent `asker` (capability `ask`), which asks
"Continue? [y/N]", and prints the task's id. `answer` follows Baton's events until the agent
waits for input, then: the task is input-required (in GetTask, in ListTasks and its status
filter, and at the start of a subscription); a viewer's follow-up is refused; the operator's follow-up (`y`) is typed into the terminal and the task goes on to
complete; a follow-up to the completed task is UnsupportedOperation, one to a task that is not
there TaskNotFound; a message with a contextId and no taskId is a new task in that context,
and, sent blocking, its answer comes when the agent asks (input-required); a subscription to
it hears the answer typed in and the task complete.
Each check prints a line; the first failure raises, and the process exits non-zero.
"""

import asyncio
import sys
import uuid

import httpx

from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.types import (
    GetTaskRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    SubscribeToTaskRequest,
    TaskState,
)
from a2a.utils.errors import TaskNotFoundError, UnsupportedOperationError
from google.protobuf.struct_pb2 import Struct

DEADLINE = 60.0


def check(what, condition, detail=""):
    if not condition:
        raise AssertionError(f"{what}: {detail}")
    print(f"ok: {what}", flush=True)


def message(text, task_id=None, context_id=None):
    return Message(
        message_id=str(uuid.uuid4()),
        role=Role.ROLE_USER,
        parts=[Part(text=text)],
        task_id=task_id or "",
        context_id=context_id or "",
    )


async def client_for(base, token, **config):
    http = httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=DEADLINE)
    async with httpx.AsyncClient(timeout=DEADLINE) as anonymous:
        card = await A2ACardResolver(anonymous, base).get_agent_card()
    return ClientFactory(ClientConfig(httpx_client=http, **config)).create(card)


async def send(client, msg, requires=None, immediately=True):
    metadata = Struct()
    if requires:
        metadata.update({"requires": requires})
    request = SendMessageRequest(
        message=msg, metadata=metadata, configuration=SendMessageConfiguration(return_immediately=immediately)
    )
    responses = [r async for r in client.send_message(request)]
    return responses[-1].task


async def create(base, operator):
    client = await client_for(base, operator, streaming=False)
    task = await send(client, message("deploy it"), requires=["ask"])
    print(f"task {task.id}", flush=True)


async def until_asked(base, token):
    """Follows Baton's event stream until the agent `asker` waits for input."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    params = {"type": "AgentStateChanged", "agent": "asker"}
    async with httpx.AsyncClient(timeout=DEADLINE) as http:
        async with http.stream("GET", f"{base}/events", headers=headers, params=params) as events:
            async for line in events.aiter_lines():
                if line.startswith("data:") and '"to":"waiting-input"' in line:
                    return


async def answer(base, operator, viewer, task_id):
    await until_asked(base, operator)
    client = await client_for(base, operator, streaming=False)
    task = await client.get_task(GetTaskRequest(id=task_id))
    check(
        "a task whose agent asks a question is input-required",
        task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED,
        str(task.status),
    )

    listed = await client.list_tasks(ListTasksRequest())
    states = {t.id: t.status.state for t in listed.tasks}
    check(
        "ListTasks shows it input-required",
        states.get(task_id) == TaskState.TASK_STATE_INPUT_REQUIRED,
        str(states),
    )
    asking = await client.list_tasks(ListTasksRequest(status=TaskState.TASK_STATE_INPUT_REQUIRED))
    check("ListTasks filters by input-required", [t.id for t in asking.tasks] == [task_id], str(asking))
    streamer = await client_for(base, operator, streaming=True)
    stream = streamer.subscribe(SubscribeToTaskRequest(id=task_id))
    first = await stream.__anext__()
    check(
        "a subscription begins with the task input-required",
        first.task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED,
        str(first),
    )
    await stream.aclose()

    watcher = await client_for(base, viewer, streaming=False)
    try:
        await send(watcher, message("y", task_id=task_id))
        check("a viewer's follow-up is refused", False)
    except Exception as error:  # noqa: BLE001 - the SDK's error for PERMISSION_DENIED
        check("a viewer's follow-up is refused", "ManageAgents" in str(error), repr(error))

    try:
        await send(client, message("y", task_id="999999"))
        check("a follow-up to a task that is not there is refused", False)
    except TaskNotFoundError:
        check("a follow-up to a task that is not there is TaskNotFound", True)

    answered = await send(client, message("y", task_id=task_id))
    check("the follow-up answers the task, which goes on", answered.id == task_id, str(answered))

    subscriber = await client_for(base, operator, streaming=True)
    last = None
    try:
        async for response in subscriber.subscribe(SubscribeToTaskRequest(id=task_id)):
            last = response
    except UnsupportedOperationError:
        pass  # it completed before the subscription started
    done = await client.get_task(GetTaskRequest(id=task_id))
    check("the answered task completes", done.status.state == TaskState.TASK_STATE_COMPLETED, str(done.status))
    output = str(done.artifacts)
    check("the agent read the answer", "proceeding with deploy it" in output, output)

    try:
        await send(client, message("y", task_id=task_id))
        check("a follow-up to a completed task is refused", False)
    except UnsupportedOperationError:
        check("a follow-up to a completed task is UnsupportedOperation", True)

    in_context = await send(client, message("deploy again", context_id="ctx-42"), requires=["ask"], immediately=False)
    check(
        "a message with a contextId and no taskId is a new task in that context",
        in_context.id != task_id and in_context.context_id == "ctx-42",
        str(in_context),
    )
    check(
        "a blocking message is answered when its agent asks",
        in_context.status.state == TaskState.TASK_STATE_INPUT_REQUIRED,
        str(in_context.status),
    )
    stream = subscriber.subscribe(SubscribeToTaskRequest(id=in_context.id))
    first = await stream.__anext__()
    check(
        "a subscription to a task that asks begins input-required",
        first.task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED,
        str(first),
    )
    await send(client, message("y", task_id=in_context.id))
    rest = [response async for response in stream]
    states = [r.status_update.status.state for r in rest if r.WhichOneof("payload") == "status_update"]
    check(
        "the subscription hears the answered task go on and complete",
        states[-1:] == [TaskState.TASK_STATE_COMPLETED] and TaskState.TASK_STATE_INPUT_REQUIRED not in states,
        str(rest),
    )
    print("all follow-up checks passed", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "create":
        asyncio.run(create(sys.argv[2], sys.argv[3]))
    else:
        asyncio.run(answer(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]))
