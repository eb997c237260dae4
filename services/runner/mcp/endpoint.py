"""The runner-side endpoint a sandboxed CLI reaches through `services.runner.mcp.relay` (contract §3).

It serves one activation's allowed servers (already filtered proxies, see proxy.py) on a Unix
socket that is bind-mounted into that activation's sandbox only. Servers and their credentials
stay on the runner side; the socket carries tool lists and calls, never a secret.

Protocol: one JSON object per line each way, one request per line, on a connection that may
carry many requests in order.

    {"op": "servers"}                                  -> {"servers": ["github", "hub"]}
    {"op": "tools", "server": "github"}                -> {"tools": [<MCP Tool, wire form>...]}
    {"op": "call", "server": "github", "tool": "get_me", "arguments": {}}
                                       -> {"text": "...", "is_error": false, "structured": {...}?}
    anything else                                      -> {"error": "..."}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from services.runner.mcp.proxy import CallResult, ServerHost

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 4 << 20

OnCall = Callable[[str, str, CallResult, float], Awaitable[None]]


class RelayEndpoint:
    def __init__(self, hosts: Mapping[str, ServerHost], socket_path: Path, on_call: OnCall | None = None) -> None:
        self.hosts, self.socket_path, self.on_call = hosts, socket_path, on_call
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> Path:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.socket_path),
                                                       limit=MAX_LINE_BYTES)
        # The sandbox's uid differs from the runner's; only that sandbox gets the socket mounted.
        os.chmod(self.socket_path, 0o666)
        return self.socket_path

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._conns):
                task.cancel()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            while line := await reader.readline():
                try:
                    reply = await self.handle(json.loads(line))
                except (ValueError, TypeError) as exc:
                    reply = {"error": f"bad request: {type(exc).__name__}"}
                writer.write(json.dumps(reply, ensure_ascii=False, default=str).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            if task is not None:
                self._conns.discard(task)
            writer.close()

    async def handle(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict):
            return {"error": "a request is a JSON object"}
        op = request.get("op")
        if op == "servers":
            return {"servers": sorted(self.hosts)}
        host = self.hosts.get(str(request.get("server")))
        if host is None:
            return {"error": f"no server {request.get('server')!r} for this activation"}
        if op == "tools":
            return {"tools": [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in host.tools]}
        if op == "call":
            arguments = request.get("arguments") or {}
            if not isinstance(arguments, dict):
                return {"error": "arguments must be a JSON object"}
            loop = asyncio.get_running_loop()
            started = loop.time()
            result = await host.call(str(request.get("tool")), arguments)
            if self.on_call is not None:
                await self.on_call(host.name, str(request.get("tool")), result, (loop.time() - started) * 1000)
            reply: dict[str, Any] = {"text": result.text, "is_error": result.is_error}
            if result.structured is not None:
                reply["structured"] = result.structured
            return reply
        return {"error": f"unknown op {op!r}"}
