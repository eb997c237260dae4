"""The contract's operator commands on real parts: `botburrow agent pause|resume` against the scheduler
stage, `botburrow cancel` against the runner stage (real nats-server, Hub emulator, scripted LLM)."""

from __future__ import annotations

import argparse
import asyncio
import uuid

import pytest

from botburrow.cli import control
from botburrow.cli.errors import CliError
from botburrow.runtime.bus import Bus
from schemas.events import ActivationRequested, RunFailed, SchedulingRefused
from services.runner.cancel import REASON
from services.scheduler.state import PAUSED_REASON, SchedulerState
from streams import subjects
from tests.fixtures.runner import END_TIMEOUT_S, Rig, kinds, metrics_of
from tests.test_scheduler import add_agents, decide, definition, feed, note, publish_notification
from tests.test_scheduler_stage import scheduler_with


def test_a_paused_agent_is_refused_with_reason_paused_and_its_work_waits() -> None:
    state = SchedulerState()
    state.paused = {"ann"}
    _, changes = decide(state, "ann", note("n1"))
    assert changes.requests == []
    assert [(r.agent, r.reason) for r in changes.refusals] == [("ann", PAUSED_REASON)]
    state.begin()
    state.retry_blocked()
    assert state.prepare("2026-12-04T00:00:01+00:00").agents == {}  # while paused, nothing to write each tick
    state.commit()
    state.paused = set()
    state.begin()
    state.retry_blocked()
    changes = state.prepare("2026-12-04T00:00:01+00:00")
    state.commit()
    assert [[n.id for n in r.notifications] for r in changes.requests] == [["n1"]]


async def test_pause_refuses_an_agent_until_resume(bus: Bus, nats_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    agent = f"paula-{uuid.uuid4().hex[:6]}"
    await add_agents(bus, definition(agent))
    async with feed(bus, subjects.decision(agent)) as decisions, \
            feed(bus, subjects.activation("*", agent)) as requests, scheduler_with(nats_url):
        assert await control.agent(bus, argparse.Namespace(action="pause", agent=agent)) == 0
        assert f"{agent} paused" in capsys.readouterr().out
        await publish_notification(bus, agent, note("n-paused"))
        refused, _ = await decisions.next(SchedulingRefused)
        assert (refused.agent, refused.kind, refused.reason) == (agent, "notification", "paused")

        assert await control.agent(bus, argparse.Namespace(action="resume", agent=agent)) == 0
        request, _ = await requests.next(ActivationRequested)
        assert [n.id for n in request.notifications] == ["n-paused"]
    assert await control.agent(bus, argparse.Namespace(action="resume", agent=agent)) == 0
    assert "was not paused" in capsys.readouterr().out
    with pytest.raises(CliError, match="no agent 'nobody-here'"):
        await control.agent(bus, argparse.Namespace(action="pause", agent="nobody-here"))


async def _started(rig: Rig, agent: str, activation_id: str) -> asyncio.Future[None]:
    started: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_msg(msg: object) -> None:
        if not started.done():
            started.set_result(None)

    await rig.bus.nc.subscribe(subjects.run_event(agent, activation_id, "started"), cb=on_msg)
    return started


@pytest.mark.slow
async def test_cancel_stops_a_running_activation_and_refuses_a_queued_one(
        rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    await rig.add_agent("slowpoke")
    rig.llm.set_script([{"text": "Never posted.", "delay_s": 60}])
    await rig.start()
    note_ = rig.hub.mention("slowpoke", "take your time")
    running = f"act-{uuid.uuid4().hex[:10]}"
    started = await _started(rig, "slowpoke", running)
    wait = await rig.ends_of("slowpoke", running)
    await rig.publish("slowpoke", running, [note_])
    await asyncio.wait_for(started, END_TIMEOUT_S)

    # The command returns once the activation ended: well before the model's 60 s answer.
    assert await control.cancel(rig.bus, argparse.Namespace(activation_id=running)) == 0
    assert "ended failed" in capsys.readouterr().out
    assert await wait() == ["failed"]
    from tests.fixtures.runner import load_run

    events = await load_run(rig.bus, running)
    assert isinstance(events[-1], RunFailed) and metrics_of(events).error == REASON
    assert rig.replies_by("slowpoke", note_.post_id) == []

    queued = f"act-{uuid.uuid4().hex[:10]}"
    assert await control.cancel(rig.bus, argparse.Namespace(activation_id=queued)) == 0
    assert "refuses it" in capsys.readouterr().out
    rig.llm.set_script([{"text": "Not asked."}])
    _, end, events = await rig.activate("slowpoke", [note_], activation_id=queued)
    assert end == "failed" and metrics_of(events).error == REASON and "LlmTurn" not in kinds(events)

    with pytest.raises(CliError, match="already ended failed"):
        await control.cancel(rig.bus, argparse.Namespace(activation_id=queued))
