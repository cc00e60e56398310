"""An MCP server whose one tool, `hang`, never answers: for the MCP client's timeout tests.

Serves over stdio, with the Python `mcp` SDK.
"""

import anyio

from mcp.server.mcpserver import MCPServer

server = MCPServer("baton-hang-server")


@server.tool(description="Never answers.")
async def hang() -> str:
    await anyio.sleep_forever()
    return "never"


if __name__ == "__main__":
    server.run("stdio")
