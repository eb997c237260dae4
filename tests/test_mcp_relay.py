"""The relay process speaks MCP's stdio transport itself (standard library only, so it starts fast):
the handshake, ping, method-not-found, notifications ignored, and a runner side that is gone turning
into a tool error rather than a dead relay. The mcp SDK's own client drives it in test_mcp_servers.py."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


async def relay_process(socket_path: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.runner.mcp.relay", str(socket_path), "probe",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env={})


async def ask(process: asyncio.subprocess.Process, message: dict[str, Any]) -> dict[str, Any]:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(json.dumps(message).encode() + b"\n")
    await process.stdin.drain()
    return json.loads(await asyncio.wait_for(process.stdout.readline(), 30))


@pytest.fixture
async def upstream(tmp_path: Path):
    """A runner-side endpoint double on a unix socket: one tool, `echo`; records what it was asked."""
    asked: list[dict[str, Any]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            request = json.loads(line)
            asked.append(request)
            if request["op"] == "tools":
                reply: dict[str, Any] = {"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]}
            else:
                reply = {"text": json.dumps(request["arguments"]), "is_error": False, "structured": {"ok": True}}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        writer.close()

    path = tmp_path / "relay.sock"
    server = await asyncio.start_unix_server(serve, path=str(path))
    yield path, asked
    server.close()


async def test_handshake_tools_and_errors(upstream: tuple[Path, list[dict[str, Any]]]) -> None:
    path, asked = upstream
    process = await relay_process(path)
    try:
        init = await ask(process, {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                                   "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                                              "clientInfo": {"name": "t", "version": "1"}}})
        assert init["result"]["protocolVersion"] == "2025-06-18"
        assert init["result"]["capabilities"] == {"tools": {}}
        # A notification gets no answer: the next line read is the ping's.
        assert process.stdin is not None
        process.stdin.write(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}\n')
        assert await ask(process, {"jsonrpc": "2.0", "id": "p", "method": "ping"}) == \
            {"jsonrpc": "2.0", "id": "p", "result": {}}
        listed = await ask(process, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        assert [t["name"] for t in listed["result"]["tools"]] == ["echo"]
        called = await ask(process, {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                                     "params": {"name": "echo", "arguments": {"x": 1}}})
        assert called["result"] == {"content": [{"type": "text", "text": '{"x": 1}'}], "isError": False,
                                    "structuredContent": {"ok": True}}
        assert asked[-1] == {"op": "call", "server": "probe", "tool": "echo", "arguments": {"x": 1}}
        unknown = await ask(process, {"jsonrpc": "2.0", "id": 4, "method": "resources/list"})
        assert unknown["error"]["code"] == -32601
        garbage = await ask(process, {"jsonrpc": "2.0", "id": 5, "method": "initialize",
                                      "params": {"protocolVersion": "1999-01-01"}})
        assert garbage["result"]["protocolVersion"] == "2025-11-25"  # unknown: our latest
    finally:
        assert process.stdin is not None
        process.stdin.close()
        assert await asyncio.wait_for(process.wait(), 30) == 0


async def test_a_runner_side_that_is_gone_is_a_tool_error(tmp_path: Path) -> None:
    process = await relay_process(tmp_path / "nobody.sock")
    try:
        called = await ask(process, {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                     "params": {"name": "echo", "arguments": {}}})
        assert called["result"]["isError"] is True and called["result"]["content"][0]["text"].startswith("relay: ")
        listed = await ask(process, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        assert listed["error"]["code"] == -32603
    finally:
        assert process.stdin is not None
        process.stdin.close()
        await asyncio.wait_for(process.wait(), 30)


def test_the_relay_loads_the_standard_library_only() -> None:
    """A CLI waits a few seconds at most for its MCP servers: `python -m services.runner.mcp.relay` must
    not pull in a third-party package, through itself or the `services`, `services.runner` and
    `services.runner.mcp` packages above it (which import nothing)."""
    probe = ("import sys, services.runner.mcp.relay; "
             "print('\\n'.join(sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names))))")
    loaded = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, check=True,
                            env={}, cwd="/").stdout.split()
    # Underscored names are the interpreter's and site's own hooks (`__main__`, an editable install's finder).
    assert {name for name in loaded if not name.startswith("_")} == {"services"}, loaded
