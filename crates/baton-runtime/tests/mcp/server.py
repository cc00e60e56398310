"""A small MCP server for Baton's MCP client tests, written with the Python `mcp` SDK.

`server.py stdio` serves on stdin/stdout; `server.py http` binds 127.0.0.1 on a port the
system picks, prints `PORT <n>` on stdout once it listens, and serves Streamable HTTP at /mcp.

Tools: `echo` (a result), `fail` (a tool error: isError), `add_tool` (adds a tool named by its
argument and says the list changed), `exit` (ends the process, for restart tests), and
`page_NN`, enough of them to need more than one page of `tools/list`.
"""

import os
import socket
import sys

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("baton-test-server")


@server.tool(description="Echoes its text back.")
def echo(text: str) -> str:
    return text


@server.tool(description="Always fails, as a tool error (isError).")
def fail(reason: str = "it failed") -> str:
    raise ToolError(reason)


@server.tool(description="Adds a tool named NAME and tells the client the list changed.")
async def add_tool(name: str, ctx: Context) -> str:
    def added() -> str:
        return f"{name} was added"

    server.add_tool(added, name=name, description=f"Added at run time: {name}.")
    await ctx.notify_tools_changed()
    return f"added {name}"


@server.tool(description="Ends the server's process at once.")
def exit() -> str:  # noqa: A001
    sys.stdout.flush()
    os._exit(3)


for index in range(60):
    server.add_tool(lambda index=index: f"page tool {index}", name=f"page_{index:02}", description="Fills pages.")


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "stdio"
    if mode == "stdio":
        server.run("stdio")
        return
    import anyio
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    app = server.streamable_http_app()
    config = uvicorn.Config(app, log_level="warning")
    anyio.run(lambda: uvicorn.Server(config).serve(sockets=[sock]))


if __name__ == "__main__":
    main()
