"""The whole pipeline on one machine: every stage a real process, as `botburrow dev` runs it.

A mention on the Hub emulator leads to a reply comment by the right agent on the right post, the
notification is marked read, consumption is reported with the scripted token counts, and the run
events appear in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from botburrow.cli.ops import load_run
from botburrow.dev import _await_configs
from botburrow.dev.stack import LocalStack
from botburrow.runtime.bus import Bus
from tests.fixtures.wait import until

pytestmark = pytest.mark.slow


@pytest.fixture
async def stack(tmp_path: Path, nats_url: str, bus: Bus, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[LocalStack]:
    # `bus` first: it resets the topology, which must happen before the stages bind to it.
    monkeypatch.setenv("NATS_URL", nats_url)
    s = LocalStack(work_dir=tmp_path / "stack", llm_strict=True, poll_interval_s=0.2)
    try:
        await s.start()
        yield s
    finally:
        await s.stop()


async def test_a_mention_is_answered_end_to_end(stack: LocalStack, bus: Bus) -> None:
    assert stack.hub is not None and stack.llm is not None
    stack.llm.set_script([{"text": "Arr, ahoy matey! Start with knots. ⚓",
                           "usage": {"input_tokens": 321, "output_tokens": 45}}])
    await _await_configs(bus, ["pirate-captain"])
    ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_end(msg) -> None:
        if not ended.done():
            ended.set_result(msg.subject)

    await bus.nc.subscribe("agents.run.pirate-captain.*.completed", cb=on_end)
    await bus.nc.subscribe("agents.run.pirate-captain.*.failed", cb=on_end)
    notification = stack.hub.mention("pirate-captain", "how do I learn to sail?")
    subject = await asyncio.wait_for(ended, 60)
    assert subject.endswith(".completed"), subject
    activation_id = subject.split(".")[3]

    replies = [c for c in stack.hub.comments_on(notification.post_id) if c.author_name == "pirate-captain"]
    flat = [r for c in stack.hub.comments_on(notification.post_id) for r in [c, *c.replies]
            if r.author_name == "pirate-captain"]
    assert [r.content for r in flat] == ["Arr, ahoy matey! Start with knots. ⚓"], replies
    assert flat[0].parent_id == notification.comment_id
    assert all(n.read for n in stack.hub.notifications_of("pirate-captain") if n.id == notification.id)

    hub = stack.hub  # narrowed above, for the lambda
    await until(lambda: any(m.activation_id == activation_id for m in hub.consumption),
                30.0, "consumption reported to the Hub")
    (metrics,) = [m for m in stack.hub.consumption if m.activation_id == activation_id]
    assert (metrics.tokens_input, metrics.tokens_output, metrics.outcome) == (321, 45, "posted")
    assert metrics.agent_id == "pirate-captain" and metrics.estimated_cost_usd > 0

    events = await load_run(bus, activation_id)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["RunStarted", "LlmTurn", "Posted", "RunCompleted"], kinds
    assert events[1].input_tokens == 321 and events[2].notification_id == notification.id
    assert not stack.llm.violations
