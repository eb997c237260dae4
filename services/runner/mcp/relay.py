"""`python -m services.runner.mcp.relay <socket> <server>`: a stdio MCP server that forwards to the runner.

A CLI in a sandbox lists this command as its MCP server `<server>`. It holds no credential (none in
its env, argv or config): it only forwards `tools/list` and `tools/call` over the activation's Unix
socket to the runner-side endpoint (endpoint.py), where the real, filtered server runs.

Standard library only, on purpose: CLIs give an MCP server a few seconds to answer `initialize`
(Goose about 10 s, then it goes on without the server's tools), and importing the `mcp` SDK took
1.7 s on an idle machine and 14 s under load. The relay speaks the few messages it needs of MCP's
stdio transport itself: newline-delimited JSON-RPC 2.0, `initialize`, `ping`, `tools/list`,
`tools/call`; everything else is answered "method not found", and notifications are ignored.
"""

from __future__ import annotations

import io
import json
import socket
import sys
from typing import IO, Any

MAX_LINE_BYTES = 4 << 20
# The stdio handshake versions this relay answers with (the mcp SDK's HANDSHAKE_PROTOCOL_VERSIONS);
# tools/list and tools/call are the same in all of them. An unknown request gets the latest.
PROTOCOL_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
METHOD_NOT_FOUND, INVALID_REQUEST, PARSE_ERROR = -32601, -32600, -32700


class Upstream:
    """One connection to the runner's endpoint; one line out, one line back."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._file: io.BufferedIOBase | None = None

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        if self._file is None:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.connect(self.socket_path)
            self._file = conn.makefile("rwb")
        self._file.write(json.dumps(request).encode() + b"\n")
        self._file.flush()
        line = self._file.readline(MAX_LINE_BYTES)
        if not line:
            self._file = None
            raise ConnectionError("the runner closed the relay connection")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply


class Relay:
    def __init__(self, upstream: Upstream, server: str) -> None:
        self.upstream, self.server = upstream, server

    def answer(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """The `result` of one request; KeyError for a method the relay does not serve."""
        if method == "initialize":
            asked = params.get("protocolVersion")
            return {"protocolVersion": asked if asked in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[-1],
                    "capabilities": {"tools": {}},
                    "serverInfo": {"name": f"botburrow-relay-{self.server}", "version": "1"}}
        if method == "ping":
            return {}
        if method == "tools/list":
            return {"tools": self.upstream.ask({"op": "tools", "server": self.server})["tools"]}
        if method == "tools/call":
            return self._call(str(params.get("name", "")), params.get("arguments") or {})
        raise KeyError(method)

    def _call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        try:
            reply = self.upstream.ask({"op": "call", "server": self.server, "tool": tool, "arguments": arguments})
        except (OSError, RuntimeError, ValueError) as exc:
            reply = {"text": f"relay: {exc}", "is_error": True}
        result: dict[str, Any] = {"content": [{"type": "text", "text": reply["text"]}],
                                  "isError": bool(reply["is_error"])}
        if reply.get("structured") is not None:
            result["structuredContent"] = reply["structured"]
        return result

    def handle(self, line: bytes) -> dict[str, Any] | None:
        """The response to one JSON-RPC line (None for a notification)."""
        try:
            message = json.loads(line)
        except ValueError:
            return _error(None, PARSE_ERROR, "not JSON")
        if not isinstance(message, dict):
            return _error(None, INVALID_REQUEST, "not a JSON-RPC message")
        if "id" not in message or not isinstance(message.get("method"), str):
            return None  # a notification (notifications/initialized, ...), or a response: the relay asks nothing
        params = message.get("params")
        if not isinstance(params, dict):
            params = {}
        try:
            return {"jsonrpc": "2.0", "id": message["id"], "result": self.answer(message["method"], params)}
        except KeyError:
            return _error(message["id"], METHOD_NOT_FOUND, f"method not found: {message['method']}")
        except (OSError, RuntimeError, ValueError) as exc:  # the runner side is gone or refused
            return _error(message["id"], -32603, f"relay: {exc}")


def _error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


def serve(relay: Relay, stdin: IO[bytes], stdout: IO[bytes]) -> None:
    for line in iter(lambda: stdin.readline(MAX_LINE_BYTES), b""):
        if not line.strip():
            continue
        response = relay.handle(line)
        if response is not None:
            stdout.write(json.dumps(response).encode() + b"\n")
            stdout.flush()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m services.runner.mcp.relay <socket path> <server>", file=sys.stderr)
        return 2
    socket_path = args[0].removeprefix("unix:")
    serve(Relay(Upstream(socket_path), args[1]), sys.stdin.buffer, sys.stdout.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
