"""`python -m botburrow.mcp.relay <socket> <server>`: a stdio MCP server that forwards to the runner.

A CLI in a sandbox lists this command as its MCP server `<server>`. It holds no credential (none in
its env, argv or config): it only forwards `tools/list` and `tools/call` over the activation's Unix
socket to the runner-side endpoint (endpoint.py), where the real, filtered server runs.
Only the standard library, `mcp` and pydantic are needed, so it runs wherever those are installed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import anyio
from mcp import types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

MAX_LINE_BYTES = 4 << 20


class Upstream:
    """One connection to the endpoint; requests are serialised (one line out, one line back)."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._lock = asyncio.Lock()
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        async with self._lock:
            if self._conn is None:
                self._conn = await asyncio.open_unix_connection(self.socket_path, limit=MAX_LINE_BYTES)
            reader, writer = self._conn
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
            if not line:
                self._conn = None
                raise ConnectionError("the runner closed the relay connection")
            reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply


def build(socket_path: str, server: str) -> Server[Any]:
    upstream = Upstream(socket_path)

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        reply = await upstream.ask({"op": "tools", "server": server})
        return types.ListToolsResult(tools=[types.Tool.model_validate(t) for t in reply["tools"]])

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        try:
            reply = await upstream.ask({"op": "call", "server": server, "tool": params.name,
                                        "arguments": params.arguments or {}})
        except (OSError, RuntimeError, ValueError) as exc:
            reply = {"text": f"relay: {exc}", "is_error": True}
        return types.CallToolResult(content=[types.TextContent(type="text", text=reply["text"])],
                                    structured_content=reply.get("structured"), is_error=bool(reply["is_error"]))

    return Server(f"botburrow-relay-{server}", on_list_tools=list_tools, on_call_tool=call_tool)


async def serve(socket_path: str, server: str) -> None:
    srv = build(socket_path, server)
    async with stdio_server() as (read_stream, write_stream):
        await srv.run(read_stream, write_stream, srv.create_initialization_options())


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m botburrow.mcp.relay <socket path> <server>", file=sys.stderr)
        return 2
    socket_path = args[0].removeprefix("unix:")
    anyio.run(serve, socket_path, args[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
