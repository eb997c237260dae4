"""Serve an ASGI app inside the current event loop, on a port chosen by the caller or the OS."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The process owns its signals (a stage drains on SIGTERM); uvicorn must not take them.
        yield


class RunningServer:
    def __init__(self, server: _Server, task: asyncio.Task[None], host: str, port: int) -> None:
        self._server, self._task = server, task
        self.host, self.port = host, port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal needs brackets
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def serve(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> RunningServer:
    """Start `app` on host:port (0 = a free port) and return once it accepts connections."""
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose protocol says TCP, and
    # without it every response waits ~40 ms for delayed ACKs.
    # The family follows the address: a pod IP (METRICS_HOST from the downward API) may be IPv6.
    addresses = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                              proto=socket.IPPROTO_TCP)
    family = addresses[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_keep_alive=30)
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"http:{bound_port}")
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError(f"HTTP server on {host}:{bound_port} stopped during start-up")
        await asyncio.sleep(0.01)
    return RunningServer(server, task, host, bound_port)
