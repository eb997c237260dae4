"""The scheduler: its pure decisions (`SchedulerState`), then the stage on a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from nats.js.kv import KeyValue

from botburrow.definitions import bucket
from botburrow.runtime.bus import Bus
from botburrow.runtime.service import run_stage
from schemas.agent import AgentConfig, AgentDefinition, Behavior, Brain, Capabilities
from schemas.events import (
    ActivationMetrics,
    ActivationRequested,
    DeadLetter,
    NotificationReceived,
    RunCompleted,
)
from schemas.hub import Author, Notification
from services.scheduler import stage as scheduler
from services.scheduler.state import (
    MAX_NOTIFICATIONS_PER_ACTIVATION,
    AgentState,
    Responds,
    SchedulerState,
    activation_id,
)
from streams import subjects
from streams.topology import SCHEDULER_PARTITIONS, scheduler_durable
from tests.fixtures.wait import until

NOW = "2025-01-01T00:00:00.000Z"
WAIT_S = 10.0


def note(id: str, type: str = "mention", sender: str = "alice") -> Notification:
    return Notification(id=id, type=type, post_id="p1", from_=Author(id="u1", name=sender, type="human"),
                        content=f"{type} {id}")


def decide(state: SchedulerState, agent: str, *notes: Notification, responds: Responds | None = None) -> Any:
    state.begin()
    verdicts = [state.on_notification(agent, n, responds or Responds()) for n in notes]
    changes = state.prepare(NOW)
    state.commit()
    return verdicts, changes


def end(state: SchedulerState, agent: str, activation: str, *, failed: bool = False) -> Any:
    state.begin()
    state.on_run_ended(agent, activation, failed=failed, ended_at=NOW, outcome="failed" if failed else "posted")
    changes = state.prepare(NOW)
    state.commit()
    return changes


# --- SchedulerState: no I/O -----------------------------------------------------------------------


def test_one_activation_per_agent_and_later_notifications_join_the_next() -> None:
    state = SchedulerState()
    verdicts, changes = decide(state, "ann", note("n1", "reply"), note("n2", "reply"))
    assert verdicts == ["queued", "queued"]
    [first] = changes.requests
    assert [n.id for n in first.notifications] == ["n1", "n2"] and first.priority == "normal"
    assert first.activation_id == activation_id("ann", ["n2", "n1"])

    verdicts, changes = decide(state, "ann", note("n3", "reply"), note("n4", "mention"))
    assert verdicts == ["merged", "merged"] and changes.requests == [] and changes.merged == 2
    assert [n.id for n in state.get("ann").pending] == ["n3", "n4"]  # type: ignore[union-attr]

    assert end(state, "bob-unrelated", "x").requests == []
    [second] = end(state, "ann", first.activation_id).requests
    assert [n.id for n in second.notifications] == ["n3", "n4"] and second.priority == "high"
    ann = state.get("ann")
    assert ann is not None and ann.in_flight is not None and ann.in_flight.activation_id == second.activation_id
    assert ann.activations_requested == 2 and ann.activations_completed == 1 and ann.pending == ()
    assert ann.last_activated_at == NOW
    # The same event redelivered changes nothing; the end of the last activation leaves the agent idle.
    assert end(state, "ann", first.activation_id).requests == []
    assert end(state, "ann", second.activation_id, failed=True).requests == []
    ann = state.get("ann")
    assert ann is not None and ann.in_flight is None and ann.activations_failed == 1


def test_skips_are_counted_with_their_reason_and_duplicates_ignored() -> None:
    state = SchedulerState()
    quiet = Responds(behavior=Behavior(respond_to_mentions=False))
    verdicts, changes = decide(state, "ann", note("f", "follow"), note("t", "thread_update"), note("u", "weird"),
                               note("s", "mention", sender="ann"), note("m", "mention"), note("d", "dm"),
                               responds=quiet)
    assert verdicts == ["skipped", "skipped", "skipped", "skipped", "skipped", "queued"]
    assert dict(changes.skipped) == {"unsupported_type": 2, "disabled": 2, "self": 1}
    assert [n.id for n in changes.requests[0].notifications] == ["d"]
    verdicts, changes = decide(state, "ann", note("d", "dm"), note("f", "follow"))
    assert verdicts == ["duplicate", "duplicate"] and changes.duplicates == 2 and changes.requests == []


def test_priority_is_the_highest_and_floods_are_split() -> None:
    state = SchedulerState()
    many = [note(f"r{i}", "reply") for i in range(MAX_NOTIFICATIONS_PER_ACTIVATION + 5)]
    _, changes = decide(state, "ann", *many, note("m", "mention"))
    [request] = changes.requests
    assert request.priority == "high" and len(request.notifications) == MAX_NOTIFICATIONS_PER_ACTIVATION
    assert "m" in {n.id for n in request.notifications}  # the urgent one is not left behind
    assert len(state.get("ann").pending) == 6  # type: ignore[union-attr]


def test_rollback_restores_every_touched_agent() -> None:
    state = SchedulerState()
    decide(state, "ann", note("n1"))
    before = state.get("ann")
    state.begin()
    state.on_notification("ann", note("n2"), Responds())
    state.on_notification("newcomer", note("n3"), Responds())
    assert state.prepare(NOW).requests  # newcomer would be scheduled
    state.rollback()
    assert state.get("ann") == before and state.get("newcomer") is None and state.in_flight_count == 1
    # Decided again from the same state, the batch gives the same activation id.
    _, changes = decide(state, "newcomer", note("n3"))
    assert changes.requests[0].activation_id == activation_id("newcomer", ["n3"])


def test_state_round_trips_as_json() -> None:
    state = SchedulerState()
    decide(state, "ann", note("n1"))
    decide(state, "ann", note("n2"))
    ann = state.get("ann")
    assert msgspec.json.decode(msgspec.json.encode(ann), type=AgentState) == ann


# --- the stage on NATS ----------------------------------------------------------------------------


def definition(name: str, **behavior: Any) -> AgentDefinition:
    config = AgentConfig(name=name, type="native", brain=Brain(model="claude-test"), capabilities=Capabilities(),
                         behavior=Behavior(**behavior))
    return AgentDefinition(name=name, hash=f"h-{name}", config=config, system_prompt="You are {{name}}.")


async def add_agents(bus: Bus, *definitions: AgentDefinition) -> None:
    configs = await bus.kv(bucket.BUCKET)
    for d in definitions:
        await configs.put(bucket.key("agent", d.name), bucket.encode(d))


async def publish_notification(bus: Bus, agent: str, n: Notification) -> None:
    await bus.publish(subjects.notification(agent), NotificationReceived(agent=agent, notification=n),
                      msg_id=f"ntf:{n.id}")


async def publish_end(bus: Bus, request: ActivationRequested) -> None:
    metrics = ActivationMetrics(activation_id=request.activation_id, agent_id=request.agent, tool_type="native",
                                model="m", task_type="notification", task_priority=request.priority,
                                outcome="posted", started_at=NOW, ended_at=NOW)
    event = RunCompleted(activation_id=request.activation_id, agent=request.agent, at=NOW, metrics=metrics)
    await bus.publish(subjects.run_event(request.agent, request.activation_id, "completed"), event)


class Feed:
    """Every message on a subject filter, in order, through an ordered consumer."""

    def __init__(self, sub: Any) -> None:
        self.sub = sub

    async def next(self, kind: type[Any]) -> tuple[Any, dict[str, str]]:
        msg = await self.sub.next_msg(timeout=WAIT_S)
        return msgspec.json.decode(msg.data, type=kind), dict(msg.headers or {})


@contextlib.asynccontextmanager
async def feed(bus: Bus, subject: str) -> AsyncIterator[Feed]:
    sub = await bus.js.subscribe(subject, ordered_consumer=True)
    try:
        yield Feed(sub)
    finally:
        await sub.unsubscribe()


@contextlib.asynccontextmanager
async def running_scheduler(nats_url: str) -> AsyncIterator[None]:
    stop = asyncio.Event()
    environ = {"NATS_URL": nats_url, "HUB_URL": "http://127.0.0.1:9", "METRICS_PORT": "0"}
    task = asyncio.create_task(run_stage("scheduler", scheduler.run, environ=environ, stop=stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_S)


async def wait_for_state(kv: KeyValue, agent: str, predicate: Callable[[AgentState], bool]) -> AgentState:
    """The agent's persisted state once it satisfies `predicate` (a KV watch, no polling)."""
    watcher = await kv.watch(agent)
    try:
        async def first_match() -> AgentState:
            async for entry in watcher:
                if entry is not None and entry.value:
                    state = msgspec.json.decode(entry.value, type=AgentState)
                    if predicate(state):
                        return state
            raise AssertionError("watch ended")

        return await asyncio.wait_for(first_match(), WAIT_S)
    finally:
        await watcher.stop()


async def test_stage_schedules_merges_and_frees_the_agent_on_completion(bus: Bus, nats_url: str) -> None:
    await add_agents(bus, definition("ann"))
    kv = await bus.kv("agent-state")
    async with feed(bus, "agents.sched.activation.>") as activations, running_scheduler(nats_url):
        await publish_notification(bus, "ann", note("n1", "reply"))
        first, headers = await activations.next(ActivationRequested)
        assert headers["Nats-Msg-Id"] == f"act:{first.activation_id}" and first.priority == "normal"
        assert [n.id for n in first.notifications] == ["n1"]

        await publish_notification(bus, "ann", note("n2", "reply"))
        await publish_notification(bus, "ann", note("n3", "mention"))
        waiting = await wait_for_state(kv, "ann", lambda s: len(s.pending) == 2)
        assert waiting.in_flight is not None and waiting.in_flight.activation_id == first.activation_id

        await publish_end(bus, first)
        second, headers = await activations.next(ActivationRequested)
        assert [n.id for n in second.notifications] == ["n2", "n3"] and second.priority == "high"
        assert headers["Nats-Msg-Id"] == f"act:{second.activation_id}"
        assert (await bus.js.get_last_msg("ACTIVATIONS", subjects.activation("high", "ann"))).seq == 2
        done = await wait_for_state(kv, "ann", lambda s: s.activations_completed == 1)
        assert done.in_flight is not None and done.in_flight.activation_id == second.activation_id


async def test_bad_input_is_dead_lettered_and_the_consumer_goes_on(bus: Bus, nats_url: str) -> None:
    await add_agents(bus, definition("ann"))
    async with feed(bus, "agents.dlq.scheduler") as dlq, feed(bus, "agents.sched.activation.>") as activations, \
            running_scheduler(nats_url):
        await publish_notification(bus, "ghost", note("g1"))
        await bus.publish(subjects.notification("ann"), b'{"v": 1, "agent": "ann", "notification": {"id": 7}}')
        await publish_notification(bus, "ann", note("f1", "follow"))
        await publish_notification(bus, "ann", note("m1", "mention"))

        letters = sorted([(await dlq.next(DeadLetter))[0] for _ in range(2)], key=lambda letter: letter.reason)
        invalid, unknown = letters
        assert unknown.reason == "unknown agent ghost" and unknown.subject == subjects.notification("ghost")
        assert invalid.reason.startswith("invalid payload") and invalid.error_path == "$.notification.id"
        # The follow (published first) led to no activation: the first one holds only the mention.
        request, _ = await activations.next(ActivationRequested)
        assert [n.id for n in request.notifications] == ["m1"]
        ann = await wait_for_state(await bus.kv("agent-state"), "ann", lambda s: s.in_flight is not None)
        assert ann.notifications_skipped == 1 and ann.notifications_received == 2


async def test_pending_work_survives_a_restart(bus: Bus, nats_url: str) -> None:
    await add_agents(bus, definition("ann"), definition("bob", respond_to_replies=False))
    kv = await bus.kv("agent-state")
    async with feed(bus, "agents.sched.activation.>") as activations:
        async with running_scheduler(nats_url):
            await publish_notification(bus, "ann", note("n1"))
            first, _ = await activations.next(ActivationRequested)
            await publish_notification(bus, "ann", note("n2", "dm"))
            await publish_notification(bus, "bob", note("b1", "reply"))
            await wait_for_state(kv, "ann", lambda s: [n.id for n in s.pending] == ["n2"])
            await wait_for_state(kv, "bob", lambda s: s.notifications_skipped == 1)
        async with running_scheduler(nats_url):
            # A redelivered notification is a duplicate for the restarted scheduler too.
            await bus.publish(subjects.notification("ann"), NotificationReceived(agent="ann", notification=note("n1")),
                              msg_id="ntf:n1-again")
            await publish_end(bus, first)
            second, _ = await activations.next(ActivationRequested)
            assert [n.id for n in second.notifications] == ["n2"] and second.agent == "ann"
            await wait_consumed(bus)
    # Nothing for bob (replies off), nothing for n1 again.
    assert (await bus.js.stream_info("ACTIVATIONS")).state.messages == 2


async def wait_consumed(bus: Bus) -> None:
    """Until every scheduler partition consumer has handled and acknowledged everything sourced to it."""
    async def drained() -> bool:
        infos = [await bus.js.consumer_info("SCHEDULER", scheduler_durable(p)) for p in range(SCHEDULER_PARTITIONS)]
        sourced = (await bus.js.stream_info("SCHEDULER")).state.messages
        return bool(sourced) and all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos)

    await until(drained, WAIT_S, "every scheduler partition drained")
