"""The runner-side proxy in front of one MCP server: filtered `tools/list` and `tools/call`.

Third-party servers cannot take our middleware, so the allowlist is enforced here, on both the
listing and every call. Each server's `mcp.Client` lives in its own task ("host"): a server that
dies or misbehaves ends that task only, and every pending or later call gets an error result
instead of hanging or cancelling the activation. Calls are bounded by `call_timeout_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from mcp import Client
from mcp.types import Tool

from botburrow.secrets import redact

log = logging.getLogger(__name__)

MAX_TOOL_PAGES = 20
RESULT_CAP_CHARS = 100_000


@dataclass(frozen=True)
class CallResult:
    text: str
    is_error: bool
    status: str  # ok | error | denied | unavailable | timeout
    structured: Any = None  # the result's structured content (redacted), for relays to pass on


class ServerUnavailable(Exception):
    pass


Job = tuple[Callable[[Client], Awaitable[Any]], "asyncio.Future[Any]"]


def render_content(result: Any) -> str:
    """A CallToolResult as text for the model: text blocks joined, other blocks named, capped."""
    parts: list[str] = []
    for block in result.content or []:
        text = getattr(block, "text", None)
        parts.append(text if isinstance(text, str) else f"[{getattr(block, 'type', 'content')} omitted]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False, default=str))
    text = "\n".join(parts)
    return text if len(text) <= RESULT_CAP_CHARS else text[:RESULT_CAP_CHARS] + "…[truncated]"


class ServerHost:
    """One open MCP server behind an allowlist. `start`, then `tools`/`call`, then `close`."""

    def __init__(self, name: str, connect: Callable[[], Client], allow: Callable[[Tool], bool],
                 call_timeout_s: float = 60.0) -> None:
        self.name, self._connect, self._allow = name, connect, allow
        self.call_timeout_s = call_timeout_s
        self.tools: list[Tool] = []
        self._jobs: asyncio.Queue[Job | None] = asyncio.Queue()
        self._ready: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.failure: str | None = None

    async def start(self, timeout_s: float) -> None:
        """Connect and list tools; raises ServerUnavailable (already logged) if that fails."""
        self._ready = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._serve(), name=f"mcp-{self.name}")
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout_s)
        except TimeoutError:
            self.failure = f"server {self.name!r} did not start within {timeout_s:g} s"
        except Exception as exc:
            self.failure = f"server {self.name!r} failed to start: {redact(_describe(exc))}"
        if self.failure:
            log.warning("mcp server unavailable", extra={"server": self.name, "error": self.failure})
            await self.close()
            raise ServerUnavailable(self.failure)

    async def _list(self, client: Client) -> list[Tool]:
        tools, cursor = [], None
        for _ in range(MAX_TOOL_PAGES):
            page = await client.list_tools(cursor=cursor)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
        return [t for t in tools if self._allow(t)]

    async def _serve(self) -> None:
        assert self._ready is not None
        try:
            async with self._connect() as client:
                self.tools = await self._list(client)
                self._ready.set_result(None)
                while (job := await self._jobs.get()) is not None:
                    fn, future = job
                    try:
                        value = await fn(client)
                    except Exception as exc:  # one failed call is that call's error, the server may go on
                        if not future.done():
                            future.set_exception(exc)
                        continue
                    if not future.done():
                        future.set_result(value)
        except BaseException as exc:  # the host task absorbs everything: see the module doc
            self.failure = self.failure or f"server {self.name!r} stopped: {redact(_describe(exc))}"
            if not self._ready.done():
                self._ready.set_exception(ServerUnavailable(self.failure))
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self.failure = self.failure or f"server {self.name!r} is closed"
            self._fail_pending()

    def _fail_pending(self) -> None:
        while not self._jobs.empty():
            job = self._jobs.get_nowait()
            if job is not None and not job[1].done():
                job[1].set_exception(ServerUnavailable(self.failure or "closed"))

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done() and self._ready is not None and self._ready.done()

    def allowed(self, tool: str) -> bool:
        return any(t.name == tool for t in self.tools)

    async def call(self, tool: str, arguments: dict[str, Any]) -> CallResult:
        if not self.allowed(tool):
            return CallResult(f"tool {tool!r} of server {self.name!r} is not granted to this agent", True, "denied")
        if self._task is None or self._task.done():
            return CallResult(f"MCP {self.failure or 'server is not running'}", True, "unavailable")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        timeout_s = self.call_timeout_s
        self._jobs.put_nowait((lambda c: c.call_tool(tool, arguments, read_timeout_seconds=timeout_s), future))
        done, _ = await asyncio.wait({future, self._task}, timeout=timeout_s + 1,
                                     return_when=asyncio.FIRST_COMPLETED)
        if future not in done:
            future.cancel()
            if self._task.done():
                return CallResult(f"MCP {self.failure}", True, "unavailable")
            return CallResult(f"{self.name}.{tool} timed out after {timeout_s:g} s", True, "timeout")
        if (exc := future.exception()) is not None:
            status = "unavailable" if isinstance(exc, ServerUnavailable) else "error"
            return CallResult(f"{self.name}.{tool} failed: {redact(_describe(exc))}", True, status)
        result = future.result()
        error = bool(result.is_error)
        structured = result.structured_content
        if structured is not None:
            structured = json.loads(redact(json.dumps(structured, ensure_ascii=False, default=str)))
        return CallResult(redact(render_content(result)), error, "error" if error else "ok", structured)

    async def close(self, timeout_s: float = 5.0) -> None:
        task = self._task
        if task is None or task.done():
            return
        self._jobs.put_nowait(None)
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        if not done:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _describe(exc.exceptions[0])
    text = str(exc) or type(exc).__name__
    return text[:500]
