"""configsync at soak size (issue 9): pass time, CPU time and event-loop blocking for 1,000 agents.

The definitions are the soak's (`bench.soak.world.write_definitions`: 1,000 regular agents plus the
special ones, one of them broken). On a fresh nats-server, passes of one `Syncer`:

1. `first`: empty bucket, every definition parsed and written;
2. `restart`: a new `Syncer` (a restarted process) on the filled bucket: parses and reconciles, writes nothing;
3. `unchanged`: the same `Syncer` again, nothing changed at the source;
4. `one_changed`: one agent's prompt edited.

Then `stop_during_pass_ms`: `sync_forever` (a new `Syncer`) is stopped 0.2 s into its first pass.

Loop blocking is measured by a ticker task that sleeps 5 ms at a time: `loop_blocked_s` sums the
stalls longer than 20 ms (time the loop could not serve anything else), `longest_stall_ms` is the worst.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.soak.world import regular_names, write_definitions
from botburrow.definitions import LocalSource
from botburrow.definitions.local import RACY_NS
from botburrow.runtime import natsserver
from botburrow.runtime.bus import Bus
from streams.apply import ensure

AGENTS = 1_000
TICK_S = 0.005
STALL_S = 0.020


class LoopMonitor:
    """Measures how long the event loop is kept from running other tasks."""

    def __init__(self) -> None:
        self.blocked_s = 0.0
        self.longest_s = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(TICK_S)
            now = time.perf_counter()
            stall_s = now - last - TICK_S
            if stall_s > STALL_S:
                self.blocked_s += stall_s
            self.longest_s = max(self.longest_s, stall_s)
            last = now

    async def measure(self, work: Callable[[], Awaitable[Any]]) -> dict[str, float]:
        self.blocked_s = self.longest_s = 0.0
        self._task = asyncio.create_task(self._tick())
        await asyncio.sleep(TICK_S * 2)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        await work()
        wall_s, cpu_s = time.perf_counter() - wall0, time.process_time() - cpu0
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return {"wall_s": round(wall_s, 3), "cpu_s": round(cpu_s, 3), "loop_blocked_s": round(self.blocked_s, 3),
                "longest_stall_ms": round(self.longest_s * 1000, 1)}


async def measure_passes(bus: Bus, root: Path, new_pass: Callable[[], Callable[[], Awaitable[Any]]]) -> dict:
    """`new_pass()` makes a pass function with fresh state (a process start); it is called per pass."""
    monitor = LoopMonitor()
    results: dict[str, Any] = {}
    first = new_pass()
    results["first"] = await monitor.measure(first)
    results["restart"] = await monitor.measure(again := new_pass())
    results["unchanged"] = await monitor.measure(again)
    prompt = root / "agents" / regular_names(1)[0] / "system-prompt.md"
    prompt.write_text(prompt.read_text() + "Changed.\n")
    results["one_changed"] = await monitor.measure(again)
    return results


async def stop_latency_ms(bus: Bus, source: LocalSource, after_s: float = 0.2) -> float:
    """A stop (SIGTERM) `after_s` into a restart pass (full parse under way): how long until the loop ends."""
    from services.configsync.sync import sync_forever

    stop = asyncio.Event()
    task = asyncio.create_task(sync_forever(bus, source, poll_s=3600, stop=stop))
    await asyncio.sleep(after_s)
    started = time.perf_counter()
    stop.set()
    await task
    return round((time.perf_counter() - started) * 1000, 1)


async def main(results_dir: Path) -> dict:
    from services.configsync.sync import Syncer

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "definitions"
        names = write_definitions(root, regular_names(AGENTS))
        server = await natsserver.start_async(Path(tmp) / "nats")
        bus = await Bus.connect(server.url, name="bench-configsync")
        try:
            await ensure(bus.js)
            source = LocalSource(root)
            await asyncio.sleep(RACY_NS / 1e9)  # files this fresh are always re-read (see read_tree)

            def new_pass() -> Callable[[], Awaitable[Any]]:
                return Syncer(bus, source).sync

            passes = await measure_passes(bus, root, new_pass)
            stop_ms = await stop_latency_ms(bus, source)
        finally:
            await bus.close()
            server.stop()
    return {"agents": len(names), "passes": passes, "stop_during_pass_ms": stop_ms}
