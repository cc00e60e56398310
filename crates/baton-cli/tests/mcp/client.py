"""A real MCP client (the Python SDK) against Baton's MCP server, for crates/baton-cli/tests/mcp.rs.

Usage: client.py (--url URL | --stdio BATON_BINARY) --mode MODE [--token TOKEN] [--create] [--wait]

MODE is `legacy` (the 2025-11-25 handshake), `2026-07-28` (stateless) or `auto` (server/discover,
then the handshake if the server does not speak the stateless era). With --create the script
creates a task and reads it back. With --wait it creates a task for the `gate` agent (which
waits for a file `gate-open` in the working directory) and waits for it with wait_for_task and a
progress callback, which opens the gate once it hears that the task runs. It prints one JSON object: what the server answered, for the
Rust test to check.
"""

import argparse
import asyncio
import json
import os
import sys

import httpx2
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client


def text_of(result):
    return "".join(getattr(block, "text", "") for block in result.content)


async def wait_for_gated_task(client, title):
    gate = os.path.join(os.getcwd(), "gate-open")
    if os.path.exists(gate):
        os.remove(gate)
    created = await client.call_tool(
        "create_tasks", {"tasks": [{"title": f"{title} (waited for)", "requires": ["gate"], "input": {"via": "wait"}}]}
    )
    task_id = created.structured_content["ids"][0]
    heard = []

    async def on_progress(progress, total, message):
        heard.append({"progress": progress, "total": total, "message": message})
        if message and "running" in message and not os.path.exists(gate):
            with open(gate, "w"):
                pass

    waited = await client.call_tool("wait_for_task", {"id": task_id, "timeout_seconds": 120}, progress_callback=on_progress)
    answer = waited.structured_content or {}
    return {
        "id": task_id,
        "is_error": waited.is_error,
        "text": text_of(waited),
        "ended": answer.get("ended"),
        "state": (answer.get("task") or {}).get("state"),
        "result": (answer.get("task") or {}).get("result"),
        "progress": heard,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url")
    parser.add_argument("--stdio")
    parser.add_argument("--cwd", default=".")
    parser.add_argument("--mode", required=True)
    parser.add_argument("--token")
    parser.add_argument("--create", action="store_true")
    parser.add_argument("--title", default="Echo from MCP")
    parser.add_argument("--wait", action="store_true")
    args = parser.parse_args()

    if args.url:
        headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
        http = httpx2.AsyncClient(headers=headers, timeout=30)
        server = streamable_http_client(args.url, http_client=http)
    else:
        env = dict(os.environ)
        if args.token:
            env["BATON_TOKEN"] = args.token
        server = StdioServerParameters(command=args.stdio, args=["mcp"], cwd=args.cwd, env=env)

    report = {}
    async with Client(server, mode=args.mode, raise_exceptions=True) as client:
        session = client.session
        report["protocol_version"] = session.protocol_version
        tools = await client.list_tools()
        report["tools"] = sorted(tool.name for tool in tools.tools)
        schemas = {tool.name: tool.input_schema for tool in tools.tools}
        report["create_schema_has_title"] = "title" in json.dumps(schemas.get("create_tasks", {}))

        status = await client.call_tool("plan_status", {})
        report["status_error"] = status.is_error
        report["plan_name"] = (status.structured_content or {}).get("plan", {}).get("name")

        bad = await client.call_tool("get_task", {"id": "seven"})
        report["bad_arguments"] = {"is_error": bad.is_error, "text": text_of(bad)}

        try:
            await client.call_tool("no_such_tool", {})
            report["unknown_tool"] = "answered"
        except Exception as error:  # the SDK raises the JSON-RPC error
            report["unknown_tool"] = str(error)

        created = await client.call_tool(
            "create_tasks", {"tasks": [{"title": args.title, "requires": ["echo"], "input": {"via": "mcp"}}]}
        )
        report["create"] = {"is_error": created.is_error, "text": text_of(created)}
        if not created.is_error:
            task_id = created.structured_content["ids"][0]
            report["created_id"] = task_id
            task = await client.call_tool("get_task", {"id": task_id})
            report["task_title"] = task.structured_content["task"]["title"]
            listed = await client.call_tool("list_tasks", {"search": args.title.lower()})
            report["search_found"] = [t["id"] for t in listed.structured_content["tasks"]]
            read = await client.read_resource(f"baton://tasks/{task_id}")
            report["task_resource_title"] = json.loads(read.contents[0].text)["task"]["title"]

        if args.wait:
            report["wait"] = await wait_for_gated_task(client, args.title)

        resources = await client.list_resources()
        report["resources"] = sorted(str(resource.uri) for resource in resources.resources)
        status_resource = await client.read_resource("baton://status")
        report["status_resource_has_plan"] = "plan" in json.loads(status_resource.contents[0].text)

    print(json.dumps(report))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except BaseException as error:  # noqa: BLE001 - the test shows what went wrong
        import traceback

        traceback.print_exc()
        print(json.dumps({"failed": repr(error)}))
        sys.exit(1)
