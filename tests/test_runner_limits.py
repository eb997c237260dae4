"""Limits and fair share across runners: an agent's daily and per-thread limits hold when its activations
land on two runner processes, and low-priority work is taken while a high-priority backlog waits.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from botburrow.cli.ops import load_run
from botburrow.definitions import bucket
from botburrow.definitions.parse import parse_agent
from botburrow.runtime.bus import Bus
from botburrow.runtime.service import run_stage
from schemas.events import ActivationRequested, Priority, RunStarted
from schemas.hub import Notification
from services.runner.posting import Usage
from services.runner.stage import LOW_SHARE
from services.runner.stage import run as runner_body
from streams import subjects
from tests.fixtures.runner import Rig
from tests.test_runner_crash import Runners

WAIT_S = 30.0


def limited_agent_yaml(name: str, *, daily_comments: int = 50, per_thread: int = 3) -> bytes:
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
  limits:
    max_daily_comments: {daily_comments}
    max_responses_per_thread: {per_thread}
    min_interval_seconds: 0
""".encode()


async def add_agent(rig: Rig, name: str, **limits: int) -> None:
    rig.keys[name] = rig.hub.add_agent(name)
    definition = parse_agent(name, limited_agent_yaml(name, **limits), b"You are {{name}}.")
    await (await rig.bus.kv(bucket.BUCKET)).put(bucket.key("agent", name), bucket.encode(definition))


class Ends:
    """Every run's end event (`completed` / `failed`) on core NATS, by activation id, in arrival order."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.changed = asyncio.Event()

    async def subscribe(self, bus: Bus) -> Any:
        async def on_msg(msg: Any) -> None:
            self.order.append(msg.subject.split(".")[3])
            self.changed.set()

        return [await bus.nc.subscribe(f"agents.run.*.*.{end}", cb=on_msg) for end in ("completed", "failed")]

    async def wait_for(self, activation_ids: list[str]) -> None:
        wanted = {subjects.token(a) for a in activation_ids}
        async with asyncio.timeout(WAIT_S):
            while not wanted <= set(self.order):
                self.changed.clear()
                await self.changed.wait()


async def publish(bus: Bus, agent: str, note: Notification, priority: Priority = "high") -> str:
    activation_id = f"act-{uuid.uuid4().hex[:10]}"
    request = ActivationRequested(activation_id=activation_id, agent=agent, kind="notification",
                                  priority=priority, notifications=[note])
    await bus.publish(subjects.activation(priority, agent), request, msg_id=f"act:{activation_id}")
    return activation_id


async def outcomes(bus: Bus, activation_ids: list[str]) -> tuple[list[str], set[str]]:
    """The outcome of each activation and the runners that started them."""
    found, runners = [], set()
    for activation_id in activation_ids:
        events = await load_run(bus, activation_id)
        found.append(events[-1].metrics.outcome)
        runners |= {e.runner for e in events if isinstance(e, RunStarted)}
    return sorted(found), runners


async def usage_of(bus: Bus, agent: str) -> Usage:
    entry = await (await bus.kv("limits")).get(f"{subjects.token(agent)}.{time.strftime('%Y%m%d', time.gmtime())}")
    assert entry.value is not None
    return msgspec.json.decode(entry.value, type=Usage)




@pytest.fixture
async def runners(rig: Rig, tmp_path: Path) -> AsyncIterator[Runners]:
    r = Runners(rig, tmp_path)
    try:
        yield r
    finally:
        await r.close()


async def chain(bus: Bus, ends: Ends, agent: str, notes: list[Notification]) -> list[str]:
    """One agent's activations one after another (the scheduler keeps one in flight per agent)."""
    ids = []
    for note in notes:
        ids.append(await publish(bus, agent, note))
        await ends.wait_for(ids[-1:])
    return ids


@pytest.mark.slow
async def test_daily_and_per_thread_limits_hold_across_two_runner_processes(rig: Rig, runners: Runners) -> None:
    await add_agent(rig, "chatty", daily_comments=3)
    await add_agent(rig, "thready", per_thread=2)
    chatty_notes = [rig.hub.mention("chatty", f"question {i}") for i in range(5)]
    first = rig.hub.mention("thready", "one thread")
    thready_notes = [first] + [rig.hub.mention("thready", f"again {i}", post_id=first.post_id) for i in range(3)]
    # Each model turn takes a while, so with one slot per runner the two agents' work lands on both.
    rig.llm.set_script([{"text": "Noted.", "delay_s": 0.5}] * 9)
    await runners.start(RUNNER_CONCURRENCY="1")
    await runners.start(RUNNER_CONCURRENCY="1")
    ends = Ends()
    subs = await ends.subscribe(rig.bus)
    chatty_ids, thready_ids = await asyncio.gather(chain(rig.bus, ends, "chatty", chatty_notes),
                                                   chain(rig.bus, ends, "thready", thready_notes))
    for sub in subs:
        await sub.unsubscribe()

    chatty_outcomes, chatty_runners = await outcomes(rig.bus, chatty_ids)
    thready_outcomes, thready_runners = await outcomes(rig.bus, thready_ids)
    assert len(chatty_runners | thready_runners) == 2
    assert chatty_outcomes == ["limited"] * 2 + ["posted"] * 3
    assert thready_outcomes == ["limited"] * 2 + ["posted"] * 2
    assert sum(len(rig.replies_by("chatty", n.post_id)) for n in chatty_notes) == 3
    assert len(rig.replies_by("thready", first.post_id)) == 2
    chatty_usage, thready_usage = await usage_of(rig.bus, "chatty"), await usage_of(rig.bus, "thready")
    assert chatty_usage.comments == 3 and thready_usage.threads == {first.post_id: 2}
    assert not rig.llm.violations


async def test_low_priority_work_is_not_starved_by_a_high_backlog(rig: Rig) -> None:
    await add_agent(rig, "busy", per_thread=50)
    await add_agent(rig, "patient")
    high_ids = [await publish(rig.bus, "busy", rig.hub.mention("busy", f"urgent {i}")) for i in range(3 * LOW_SHARE)]
    low_ids = [await publish(rig.bus, "patient", rig.hub.mention("patient", f"whenever {i}"), "low")
               for i in range(2)]
    rig.llm.set_script([{"text": "Done."}] * len(high_ids + low_ids))
    ends = Ends()
    subs = await ends.subscribe(rig.bus)
    environ = {
        "PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), "NATS_URL": rig.nats_url,
        "HUB_URL": rig.hub.url, "HUB_API_KEY": rig.hub.system_key, "BOTBURROW_AGENT_KEYS": json.dumps(rig.keys),
        "MODEL_BASE_URL_OVERRIDE": rig.llm.url, "METRICS_PORT": "0", "RUNNER_CONCURRENCY": "1",
    }
    rig.task = asyncio.create_task(run_stage("runner", runner_body, environ=environ, stop=rig.stop))
    await ends.wait_for(high_ids + low_ids)
    for sub in subs:
        await sub.unsubscribe()

    # One slot, a backlog of 15 high: without a low share both low ones would finish last.
    positions = [ends.order.index(subjects.token(a)) for a in low_ids]
    assert max(positions) < 2 * LOW_SHARE + 1, ends.order
    assert not rig.llm.violations


async def test_a_post_the_hub_refuses_gives_its_count_back(bus: Bus, hub_emulator: Any, hub_client: Any) -> None:
    from botburrow.hub.client import HubError
    from schemas.agent import Limits
    from services.runner.posting import Poster, Target

    key = hub_emulator.add_agent("refused")
    note = hub_emulator.mention("refused", "please answer")
    poster = Poster(bus, hub_client, "refused", key, Limits(max_daily_comments=1, min_interval_seconds=0))
    target = Target(kind="comment", post_id=note.post_id)
    hub_emulator.set_fault(status=400, count=1, method="POST", path_prefix=f"/api/v1/posts/{note.post_id}/comments")
    with pytest.raises(HubError):
        await poster.publish("act-refused.n1", target, "first try")
    assert (await poster.usage()).comments == 0  # refused: not counted, so the retry below fits the limit
    posted = await poster.publish("act-refused.n1", target, "second try")
    assert posted.outcome == "posted"
    assert (await poster.usage()).comments == 1
    limited = await poster.publish("act-refused.n2", target, "over the limit")
    assert limited.outcome == "limited" and "max_daily_comments" in (limited.reason or "")


async def test_the_thread_wide_cap_lets_exactly_its_number_through_when_agents_race(
        bus: Bus, hub_emulator: Any, hub_client: Any) -> None:
    from schemas.agent import Limits
    from services.runner.posting import Poster, Target, ThreadReplies, thread_key

    post = hub_emulator.add_post("a busy thread")
    names = [f"racer-{i}" for i in range(8)]
    posters = [Poster(bus, hub_client, name, hub_emulator.add_agent(name), Limits(min_interval_seconds=0),
                      thread_replies_max=3) for name in names]
    target = Target(kind="comment", post_id=post.id)
    # Eight agents (as if on eight runners: each Poster reads and writes the bucket on its own) at once.
    results = await asyncio.gather(*(p.publish(f"act-{i}.n1", target, f"me first ({i})")
                                     for i, p in enumerate(posters)))

    assert sorted(r.outcome for r in results) == ["limited"] * 5 + ["posted"] * 3
    assert all("THREAD_AGENT_REPLIES_MAX (3) reached" in (r.reason or "") for r in results if r.outcome == "limited")
    assert len(hub_emulator.comments_on(post.id)) == 3
    entry = await (await bus.kv("limits")).get(thread_key(post.id))
    assert entry.value is not None
    assert msgspec.json.decode(entry.value, type=ThreadReplies).agent_replies == 3
    # A refused agent's own count was given back: the thread refused it, not its limits.
    refused = [p for p, r in zip(posters, results, strict=True) if r.outcome == "limited"]
    assert [(await p.usage()).comments for p in refused] == [0] * 5
