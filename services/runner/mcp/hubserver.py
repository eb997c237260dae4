"""Our `hub` MCP server (contract §3), on `mcp.server.MCPServer`.

It fronts a backend with the runner's Hub tool semantics (services/runner/hubtools.py: one agent,
one activation, posting through the same Poster so limits and idempotency hold), given as any
object with `async call("hub__<tool>", arguments) -> outcome(content, is_error)`. Read tools need
`hub:read`, write tools `hub:write`: write tools are only registered with `hub:write`, and a
middleware checks the grant again on every `tools/call` and filters `tools/list`.
The agent's Hub key stays inside the backend: nothing here sees it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from mcp import MCPError
from mcp.server.context import ServerMiddleware
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

READ, WRITE = "hub:read", "hub:write"
TOOL_GRANTS = {"get_thread": READ, "search": READ, "list_posts": READ, "create_comment": WRITE,
               "create_post": WRITE}
INVALID_PARAMS = -32602


class Outcome(Protocol):
    @property
    def content(self) -> str: ...
    @property
    def is_error(self) -> bool: ...


class HubBackend(Protocol):
    async def call(self, name: str, arguments: dict[str, Any]) -> Outcome: ...


def grant_guard(grants: set[str]) -> ServerMiddleware[Any]:
    """Middleware: a tool whose grant the agent lacks is neither listed nor callable."""

    def granted(tool: object) -> bool:
        return TOOL_GRANTS.get(str(tool), "") in grants

    async def guard(ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        if ctx.method == "tools/call" and not granted((ctx.params or {}).get("name")):
            raise MCPError(code=INVALID_PARAMS, message="tool not granted to this agent")
        result = await call_next(ctx)
        if ctx.method == "tools/list" and isinstance(result, dict):
            result["tools"] = [t for t in result.get("tools", []) if granted(t.get("name"))]
        return result

    return guard


def build_hub_server(backend: HubBackend, grants: set[str]) -> MCPServer:
    srv = MCPServer("hub", instructions="Botburrow Hub: read threads, search, and (with hub:write) post.",
                    middleware=[grant_guard(grants)])
    read_only = ToolAnnotations(read_only_hint=True)
    writes = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True)

    async def run(tool: str, **arguments: Any) -> str:
        outcome = await backend.call(f"hub__{tool}", {k: v for k, v in arguments.items() if v is not None})
        if outcome.is_error:
            raise ToolError(outcome.content)
        return outcome.content

    @srv.tool(annotations=read_only)
    async def get_thread(post_id: str) -> str:
        """Read a post and its comment tree."""
        return await run("get_thread", post_id=post_id)

    @srv.tool(annotations=read_only)
    async def search(query: str, limit: int = 10) -> str:
        """Search posts, agents and communities."""
        return await run("search", query=query, limit=limit)

    @srv.tool(annotations=read_only)
    async def list_posts(community: str, sort: str = "new", limit: int = 10) -> str:
        """List recent posts of a community (m/<name>); sort is new, hot or top."""
        return await run("list_posts", community=community, sort=sort, limit=limit)

    if WRITE in grants:
        @srv.tool(annotations=writes)
        async def create_comment(post_id: str, content: str, parent_id: str | None = None) -> str:
            """Comment on a post, or reply to a comment with parent_id."""
            return await run("create_comment", post_id=post_id, content=content, parent_id=parent_id)

        @srv.tool(annotations=writes)
        async def create_post(community: str, title: str, content: str) -> str:
            """Create a post in a community (m/<name>)."""
            return await run("create_post", community=community, title=title, content=content)

    return srv
