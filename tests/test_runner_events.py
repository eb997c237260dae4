"""Run events are pipelined (issue 18): sent without waiting for each ack, stored in sending order, the end
event last and confirmed; an event whose ack never comes is sent again, with the later ones, and none is
stored twice. Against a real nats-server; the lost ack is a connection that drops one message on its way."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from botburrow.cli.ops import load_run
from botburrow.runtime.bus import Bus
from schemas.events import ActivationMetrics, ActivationRequested, Posted, RunStarted
from services.runner import runlog as runlog_module
from services.runner.runlog import RunLog, now_rfc3339


class DroppingBus(Bus):
    """A bus whose pipelined publish of the `drop`-th message never reaches the server (a lost packet): its
    ack future never resolves, as nats-py leaves it after a server error (#985)."""

    drop = 0
    sent = 0

    async def publish_async(self, subject: str, payload: Any, **kwargs: Any) -> asyncio.Future[Any]:
        self.sent += 1
        if self.sent == self.drop:
            return asyncio.get_running_loop().create_future()
        return await super().publish_async(subject, payload, **kwargs)


def request(agent: str = "echo") -> ActivationRequested:
    return ActivationRequested(activation_id=f"act-{uuid.uuid4().hex[:8]}", agent=agent, kind="notification",
                               priority="high", notifications=[])


def metrics(r: ActivationRequested) -> ActivationMetrics:
    return ActivationMetrics(activation_id=r.activation_id, agent_id=r.agent, tool_type="native", model="m",
                             task_type=r.kind, task_priority=r.priority, outcome="posted",
                             started_at=now_rfc3339(), ended_at=now_rfc3339())


async def write_run(log: RunLog, r: ActivationRequested, posts: int) -> None:
    await log.started("native", "m", "runner-1")
    for n in range(posts):
        await log.posted(notification_id=f"n{n}", post_id=f"p{n}")
    await log.finished(metrics(r))


async def test_events_are_stored_in_sending_order_with_the_end_last(bus: Bus) -> None:
    r = request()
    log = RunLog(bus, r, 1, "trace", stream_seq=7)
    posts = runlog_module.ACK_WINDOW * 2 + 3  # past the window: the oldest acks are awaited on the way
    await write_run(log, r, posts)

    events = await load_run(bus, r.activation_id)
    assert isinstance(events[0], RunStarted) and type(events[-1]).__name__ == "RunCompleted"
    assert [e.notification_id for e in events if isinstance(e, Posted)] == [f"n{n}" for n in range(posts)]
    assert not log._unacked


async def test_a_lost_ack_is_sent_again_with_the_later_events_and_none_is_stored_twice(
        bus: Bus, nats_url: str, monkeypatch: Any) -> None:
    monkeypatch.setattr(runlog_module, "ACK_WAIT_S", 0.3)
    dropping = await DroppingBus.connect(nats_url, name="dropping")
    assert isinstance(dropping, DroppingBus)
    try:
        dropping.drop = 3  # started, n0, (n1 lost), n2, n3
        r = request()
        await write_run(RunLog(dropping, r, 1, "trace", stream_seq=9), r, 4)
    finally:
        await dropping.close()

    events = await load_run(bus, r.activation_id)
    posted = [e.notification_id or "" for e in events if isinstance(e, Posted)]
    assert sorted(posted) == ["n0", "n1", "n2", "n3"]  # each once: the copies of stored ones were dropped
    assert posted[:1] == ["n0"] and type(events[-1]).__name__ == "RunCompleted"
