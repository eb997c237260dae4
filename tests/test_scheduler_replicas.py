"""Three scheduler processes share the partitions; one is killed mid-stream; no activation is doubled."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from nats.js.errors import KeyNotFoundError

from botburrow.runtime.bus import Bus
from botburrow.runtime.kvread import bucket_keys
from schemas.events import ActivationRequested
from streams.topology import SCHEDULER_PARTITIONS
from tests.fixtures.wait import until
from tests.test_scheduler import add_agents, definition, note, publish_end, publish_notification, wait_consumed

AGENTS = [f"agent-{i:02d}" for i in range(48)]
WAIT_S = 30.0


@contextlib.asynccontextmanager
async def schedulers(nats_url: str, count: int, log_dir: Path) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", str(log_dir)),
           "NATS_URL": nats_url, "HUB_URL": "http://127.0.0.1:9", "METRICS_PORT": "0", "PYTHONUNBUFFERED": "1"}
    processes = []
    for index in range(count):
        with open(log_dir / f"scheduler-{index}.log", "wb") as log_file:  # noqa: ASYNC230 - handed to the child
            processes.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "botburrow", "scheduler", env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file, stderr=log_file))
    try:
        yield processes
    finally:
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()


async def owners(bus: Bus) -> dict[int, int]:
    """partition -> pid of the replica holding it (replica ids are `<host>-<pid>-<random>`)."""
    kv = await bus.kv("scheduler-owners")
    held = {}
    for key in await bucket_keys(kv):
        if key.startswith("part."):
            with contextlib.suppress(KeyNotFoundError):  # expired since listed
                entry = await kv.get(key)
                held[int(key.split(".")[1])] = int((entry.value or b"").decode().rsplit("-", 2)[1])
    return held


async def wait_spread(bus: Bus, pids: set[int]) -> dict[int, int]:
    """Until every partition is held, by exactly the replicas in `pids`, none above its fair share
    ceil(N / replicas) (polls the small owners bucket). All held is not enough: a replica that counted
    fewer members when it claimed holds more until its next balance gives some back."""
    share = math.ceil(SCHEDULER_PARTITIONS / len(pids))

    async def spread() -> dict[int, int] | None:
        held = await owners(bus)
        fair = len(held) == SCHEDULER_PARTITIONS and set(held.values()) == pids
        return held if fair and max(Counter(held.values()).values()) <= share else None

    return await until(spread, WAIT_S, f"partitions spread over {sorted(pids)}")


async def collect(sub: object, count: int) -> list[ActivationRequested]:
    got = []
    for _ in range(count):
        msg = await sub.next_msg(timeout=WAIT_S)  # type: ignore[attr-defined]
        got.append(msgspec.json.decode(msg.data, type=ActivationRequested))
    return got


@pytest.mark.slow
async def test_three_replicas_and_a_kill_schedule_everything_once(bus: Bus, nats_url: str, tmp_path: Path) -> None:
    owners_kv = await bus.kv("scheduler-owners")
    with contextlib.suppress(Exception):
        await owners_kv.purge_deletes(olderthan=-1)
    await add_agents(bus, *(definition(agent) for agent in AGENTS))
    sub = await bus.js.subscribe("agents.sched.activation.>", ordered_consumer=True)
    async with schedulers(nats_url, 3, tmp_path) as processes:
        await wait_spread(bus, {p.pid for p in processes})  # a fair share each: ceil(16 / 3) = 6 at most

        await asyncio.gather(*(publish_notification(bus, agent, note(f"{agent}-1")) for agent in AGENTS))
        first = await collect(sub, len(AGENTS))
        half = len(AGENTS) // 2
        await asyncio.gather(*(publish_end(bus, request) for request in first[:half]))
        await asyncio.gather(*(publish_notification(bus, agent, note(f"{agent}-2")) for agent in AGENTS[:half]))
        processes[0].kill()  # SIGKILL mid-stream: no release, no ack of anything in hand
        await asyncio.gather(*(publish_notification(bus, agent, note(f"{agent}-2")) for agent in AGENTS[half:]))
        await asyncio.gather(*(publish_end(bus, request) for request in first[half:]))
        await wait_spread(bus, {p.pid for p in processes[1:]})
        second = await collect(sub, len(AGENTS))
        await wait_consumed(bus)
    await sub.unsubscribe()

    assert sorted(r.agent for r in first) == AGENTS and sorted(r.agent for r in second) == AGENTS
    scheduled = Counter(n.id for r in first + second for n in r.notifications)
    assert set(scheduled) == {f"{a}-{i}" for a in AGENTS for i in (1, 2)} and set(scheduled.values()) == {1}
    assert (await bus.js.stream_info("ACTIVATIONS")).state.messages == 2 * len(AGENTS)
