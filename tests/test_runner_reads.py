"""An activation's Hub reads are issued together (issue 18): a thread's post and comments, and every
notification's thread, are in flight at once. The Hub emulator's own app, behind a gate that holds each
request until the expected number are in flight together (or 2 s pass): read one after the other, the peak
stays 1."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx

from botburrow.doubles.hub_emulator import HubEmulator
from botburrow.hub import HubClient
from services.runner.context import Cuts, InputBounds
from services.runner.hubreads import HubThreads, all_of

HOLD_S = 2.0


class InFlight:
    """ASGI middleware: counts requests in flight, holding each until `want` are in flight at once."""

    def __init__(self, app: Any, want: int) -> None:
        self.app, self.want = app, want
        self.now = self.peak = 0
        self.together = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.now += 1
        self.peak = max(self.peak, self.now)
        if self.now >= self.want:
            self.together.set()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.together.wait(), HOLD_S)
            await self.app(scope, receive, send)
        finally:
            self.now -= 1


async def test_every_thread_of_an_activation_is_read_at_once() -> None:
    hub = HubEmulator(system_key="k")
    key = hub.add_agent("reader")
    notes = [hub.mention("reader", f"question {n}") for n in range(3)]
    gate = InFlight(hub.app, want=6)  # three threads, a post and its comments each
    client = HubClient("http://hub.test", transport=httpx.ASGITransport(app=gate))
    try:
        threads = HubThreads(client, InputBounds())
        read = await all_of(*(threads.thread(key, n, Cuts()) for n in notes))
    finally:
        await client.aclose()
    assert gate.peak == 6
    assert [f"question {n}" in (text or "") for n, (text, _) in enumerate(read)] == [True] * 3


async def test_all_of_raises_the_first_error_itself_after_every_call_ended() -> None:
    ended: list[str] = []

    async def ok(name: str) -> str:
        await asyncio.sleep(0)
        ended.append(name)
        return name

    async def fails() -> str:
        raise KeyError("first")

    with contextlib.suppress(KeyError):
        await all_of(fails(), ok("a"), ok("b"))
        raise AssertionError("no error raised")
    assert sorted(ended) == ["a", "b"]  # none was cancelled half-way
    assert await all_of(ok("x"), ok("y")) == ["x", "y"]
