"""Agents that provoke each other stop: real ingest, scheduler and two runner processes against the Hub
emulator, with a scripted model whose every answer mentions the next agent of a ring. Each posted
mention becomes a Hub notification for the next agent, which ingest picks up, so the ring runs until
a limit stops it: `max_responses_per_thread` for a pair, THREAD_AGENT_REPLIES_MAX for three or more.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

# The runner processes import these too; importing them here keeps collection, not a wait, paying for it.
import services.runner.providers  # noqa: F401
from botburrow.definitions import bucket
from botburrow.definitions.parse import parse_agent
from botburrow.dev.stack import LocalStack, StageProcess
from botburrow.runtime.bus import Bus
from schemas.events import RunCompleted, RunFailed, RunStarted
from services.runner.posting import ThreadReplies, thread_key
from tests.fixtures.runner import Rig

pytestmark = pytest.mark.slow
WAIT_S = 90.0


def ring_agent_yaml(name: str, per_thread: int) -> bytes:
    return f"""\
version: "1.0.0"
name: {name}
type: native
brain:
  provider: anthropic
  model: claude-sonnet-4-20250514
capabilities:
  grants: [hub:read, hub:write]
behavior:
  respond_to_mentions: true
  respond_to_replies: true
  limits:
    max_responses_per_thread: {per_thread}
    max_daily_comments: 500
    min_interval_seconds: 0
""".encode()


class Ends:
    """Every activation's end event, decoded, in arrival order; and the runners that started them."""

    def __init__(self) -> None:
        self.ends: list[RunCompleted | RunFailed] = []
        self.runners: set[str] = set()
        self.handled: set[str] = set()  # notification ids of the activations that started
        self.started: set[str] = set()
        self.ended: set[str] = set()
        self.changed = asyncio.Event()

    async def subscribe(self, bus: Bus) -> list[Any]:
        decoder = msgspec.json.Decoder(RunCompleted | RunFailed | RunStarted)

        async def on_msg(msg: Any) -> None:
            event = decoder.decode(msg.data)
            if isinstance(event, RunStarted):
                self.runners.add(event.runner)
                self.handled |= set(event.notification_ids)
                self.started.add(event.activation_id)
                return
            self.ends.append(event)
            self.ended.add(event.activation_id)
            self.changed.set()

        return [await bus.nc.subscribe(f"agents.run.*.*.{name}", cb=on_msg)
                for name in ("started", "completed", "failed")]

    async def until_stopped(self) -> RunCompleted | RunFailed:
        """Wait for the first activation that ends without posting: the ring's end."""
        async with asyncio.timeout(WAIT_S):
            while True:
                stopped = [e for e in self.ends if e.metrics.outcome != "posted"]
                if stopped:
                    return stopped[0]
                self.changed.clear()
                await self.changed.wait()


class Pipeline:
    """ingest, scheduler and two runners as processes, on the rig's NATS, Hub emulator and scripted LLM."""

    def __init__(self, rig: Rig, work_dir: Path) -> None:
        self.rig = rig
        self.stack = LocalStack(work_dir=work_dir, nats_url=rig.nats_url, hub=rig.hub, llm=rig.llm,
                                poll_interval_s=0.2)
        self.started: list[StageProcess] = []

    async def start(self, **env: str) -> None:
        self.stack.agent_keys = dict(self.rig.keys)
        self.stack.extra_env = {"HUB_API_KEY": self.rig.hub.system_key, "RUNNER_CONCURRENCY": "1", **env}
        for name, index in (("ingest", 0), ("scheduler", 0), ("runner", 0), ("runner", 1)):
            self.started.append(await self.stack.start_stage(name, index))
        for stage in self.started:
            await self.stack.wait_ready(stage)

    async def close(self) -> None:
        await asyncio.gather(*(self.stack.stop_stage(s, signal.SIGKILL) for s in self.started))


@pytest.fixture
async def pipeline(rig: Rig, tmp_path: Path) -> AsyncIterator[Pipeline]:
    p = Pipeline(rig, tmp_path)
    try:
        yield p
    finally:
        await p.close()


async def add_ring(rig: Rig, names: list[str], per_thread: int) -> None:
    kv = await rig.bus.kv(bucket.BUCKET)
    for name in names:
        rig.keys[name] = rig.hub.add_agent(name)
        definition = parse_agent(name, ring_agent_yaml(name, per_thread), b"You are {{name}}. Always answer.")
        await kv.put(bucket.key("agent", name), bucket.encode(definition))


async def run_ring(rig: Rig, pipeline: Pipeline, names: list[str], *, turns: int,
                   **env: str) -> tuple[Ends, RunCompleted | RunFailed, str]:
    """Agent i answers with a mention of agent i+1, in the order the ring asks."""
    rig.llm.set_script([{"text": f"@{names[(i + 1) % len(names)]} over to you ({i})"} for i in range(turns)])
    ends = Ends()
    subs = await ends.subscribe(rig.bus)
    await pipeline.start(**env)
    first = rig.hub.mention(names[0], f"@{names[0]} start the ring")
    stopped = await ends.until_stopped()
    for sub in subs:
        await sub.unsubscribe()
    return ends, stopped, first.post_id or ""


def agent_replies(rig: Rig, post_id: str, names: list[str]) -> list[Any]:
    return [c for c in rig.hub.comments_on(post_id) if c.author_name in names]


async def test_two_agents_mentioning_each_other_stop_at_max_responses_per_thread(
        rig: Rig, pipeline: Pipeline) -> None:
    names = ["ping-agent", "pong-agent"]
    await add_ring(rig, names, per_thread=3)
    # The thread-wide cap is out of the way: only each agent's own per-thread limit can stop them.
    ends, stopped, post_id = await run_ring(rig, pipeline, names, turns=6, THREAD_AGENT_REPLIES_MAX="100")

    replies = agent_replies(rig, post_id, names)
    assert [c.author_name for c in replies] == names * 3  # ping, pong, ping, pong, ping, pong
    assert stopped.metrics.outcome == "limited" and stopped.metrics.agent_id == "ping-agent"
    assert "max_responses_per_thread (3) reached" in (stopped.metrics.error or "")
    assert [e.metrics.outcome for e in ends.ends] == ["posted"] * 6 + ["limited"]
    assert len(ends.runners) == 2, ends.runners  # the per-thread count held across both runner processes
    assert len(rig.llm.requests) == 6 and not rig.llm.violations  # no model call for the stopped one


async def until_quiet(rig: Rig, ends: Ends, names: list[str]) -> None:
    """Wait until every notification the Hub made for the agents was taken by an activation that ended:
    nothing is left to answer, and only an answer makes a new notification, so nothing more happens."""
    async with asyncio.timeout(WAIT_S):
        while True:
            made = {n.id for name in names for n in rig.hub.notifications_of(name)}
            if made <= ends.handled and ends.started <= ends.ended:
                return
            ends.changed.clear()
            await ends.changed.wait()


async def test_a_ring_of_three_stops_at_the_thread_wide_cap(rig: Rig, pipeline: Pipeline) -> None:
    names = ["ring-a", "ring-b", "ring-c"]
    await add_ring(rig, names, per_thread=50)  # each agent alone would go on for 50 replies
    # Every answer mentions the other two and notifies its parent's author: the ring fans out, so
    # agents answer at once on both runners and race for the thread's last replies.
    rig.llm.set_script([{"text": f"@ring-a @ring-b @ring-c what do you think? ({i})"} for i in range(40)])
    ends = Ends()
    subs = await ends.subscribe(rig.bus)
    await pipeline.start(THREAD_AGENT_REPLIES_MAX="7", RUNNER_CONCURRENCY="2")
    post_id = rig.hub.mention("ring-a", "@ring-a start the ring").post_id or ""
    await until_quiet(rig, ends, names)
    for sub in subs:
        await sub.unsubscribe()

    assert len(agent_replies(rig, post_id, names)) == 7
    count = await (await rig.bus.kv("limits")).get(thread_key(post_id))
    assert count.value is not None
    assert msgspec.json.decode(count.value, type=ThreadReplies).agent_replies == 7
    stopped = [e.metrics for e in ends.ends if e.metrics.outcome != "posted"]
    assert stopped, "the ring was never stopped"
    for metrics in stopped:  # every stopped activation says why
        assert metrics.outcome == "limited", metrics
        assert "THREAD_AGENT_REPLIES_MAX (7) reached" in (metrics.error or ""), metrics
    assert sum(e.metrics.outcome == "posted" for e in ends.ends) <= 7
    assert len(ends.runners) == 2, ends.runners
    assert not rig.llm.violations
