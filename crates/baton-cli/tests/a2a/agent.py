"""A tiny A2A 1.0 agent made with the official A2A Python SDK (a2a-sdk 1.x): what a
`runtime = "a2a"` Baton agent calls in the tests.

Usage: agent.py streaming|polling|elsewhere

`elsewhere` streams too, but its card names its JSON-RPC interface at `localhost` while the
card is read at `127.0.0.1`: another origin, which must not be sent the credentials.

It listens on a port the system picks and prints `listening on URL` once it serves. Every
request must carry `Authorization: Bearer far-secret`. What it does with a message, by its
text: `fail` fails the task; `sleep` works until the task is cancelled (and prints
`canceled TASK` when it is); anything else is echoed back as a data artifact
(`{"echo": TEXT, "input": DATA}`), with a progress message before and token usage in the final
status's metadata.
"""

import asyncio
import socket
import sys

import uvicorn
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import JSONResponse

from a2a.helpers.proto_helpers import get_data_parts, get_message_text, new_task_from_user_message, new_text_message
from a2a.server.agent_execution import AgentExecutor
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    Part,
    Role,
    TaskState,
)

MODE = sys.argv[1]
STREAMING = MODE in ("streaming", "elsewhere")
TOKEN = "Bearer far-secret"


class Echo(AgentExecutor):
    async def execute(self, context, event_queue):
        task = context.current_task or new_task_from_user_message(context.message)
        if context.current_task is None:
            await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        text = get_message_text(context.message)
        if text.startswith("fail"):
            await updater.failed(new_text_message("asked to fail", role=Role.ROLE_AGENT))
            return
        await updater.start_work(new_text_message("working on it", role=Role.ROLE_AGENT))
        if text.startswith("sleep"):
            await asyncio.Event().wait()
        data = get_data_parts(context.message.parts)
        echo = {"echo": text, "input": data[0] if data else None}
        part = Part()
        json_format.ParseDict({"data": echo}, part)
        await updater.add_artifact([part], name="echo")
        await updater.update_status(
            TaskState.TASK_STATE_COMPLETED, metadata={"usage": {"input_tokens": 11, "output_tokens": 7}}
        )

    async def cancel(self, context, event_queue):
        print(f"canceled {context.task_id}", flush=True)
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        await updater.cancel()


class Bearer(BaseHTTPMiddleware):
    async def dispatch(self, request, call_next):
        if request.url.path.startswith("/.well-known/") or request.headers.get("authorization") == TOKEN:
            return await call_next(request)
        return JSONResponse({"error": "unauthorized"}, status_code=401)


async def main():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    rpc_base = url.replace("127.0.0.1", "localhost") if MODE == "elsewhere" else url
    card = AgentCard(
        name="far-echo",
        description="Echoes what it is sent",
        version="1.0.0",
        supported_interfaces=[AgentInterface(url=f"{rpc_base}/rpc", protocol_binding="JSONRPC", protocol_version="1.0")],
        capabilities=AgentCapabilities(streaming=STREAMING, push_notifications=False),
        default_input_modes=["text/plain", "application/json"],
        default_output_modes=["application/json"],
        skills=[AgentSkill(id="echo", name="echo", description="echoes", tags=["echo", "words"])],
    )
    handler = DefaultRequestHandler(agent_executor=Echo(), task_store=InMemoryTaskStore(), agent_card=card)
    app = Starlette(routes=create_agent_card_routes(card) + create_jsonrpc_routes(handler, rpc_url="/rpc"))
    app.add_middleware(Bearer)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    print(f"listening on {url}", flush=True)
    await serving


asyncio.run(main())
