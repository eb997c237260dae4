"""An activation ends once (issue 9): a request that comes back after its activation already ended (its
final ack lost to a nats-server SIGKILL, or the request published again) is acknowledged without a
second run, a second `completed`/`failed` (the consumption event) or a dead letter."""

from __future__ import annotations

import uuid

import pytest

from botburrow.cli.ops import load_run
from botburrow.runtime.bus import Bus
from schemas.codec import decode_subject
from schemas.events import ActivationMetrics, ActivationRequested, Outcome
from services.runner.runlog import RunLog, now_rfc3339
from streams.apply import ensure
from streams.topology import MAX_DELIVERIES
from tests.fixtures.runner import Rig, dead_letters, kinds, lease_released
from tests.fixtures.wait import until

WAIT_S = 20.0


async def all_handled(bus: Bus) -> None:
    """Wait until the runner has acknowledged every activation request in the stream."""
    async def acknowledged() -> bool:  # consumer state has no event to wait on
        last_seq = (await bus.js.stream_info("ACTIVATIONS")).state.last_seq
        return (await bus.js.consumer_info("ACTIVATIONS", "runner-high")).ack_floor.stream_seq >= last_seq

    await until(acknowledged, WAIT_S, "every activation request acknowledged")


def ended(request: ActivationRequested, outcome: Outcome) -> ActivationMetrics:
    return ActivationMetrics(
        activation_id=request.activation_id, agent_id=request.agent, tool_type="native", model="m",
        task_type=request.kind, task_priority=request.priority, outcome=outcome,
        error="scripted" if outcome == "failed" else None, started_at=now_rfc3339(), ended_at=now_rfc3339())


@pytest.mark.parametrize(("outcome", "deliveries_before"), [
    ("posted", 1),  # the final ack was lost: the next delivery would have run it again
    ("posted", MAX_DELIVERIES),  # ... and the last one would have given up: `failed` after `completed`
    ("failed", 1),
])
async def test_a_redelivery_of_an_ended_activation_is_acknowledged_without_a_second_end(
        rig: Rig, outcome: Outcome, deliveries_before: int) -> None:
    await rig.add_agent("echo")
    note = rig.hub.mention("echo", "hello?")
    rig.llm.set_script([{"text": "Answered twice."}])
    activation_id = f"act-{uuid.uuid4().hex[:10]}"
    await rig.publish("echo", activation_id, [note])

    # The first runner: it ends the activation on the first delivery, and its acks never arrive.
    sub = await rig.bus.js.pull_subscribe_bind("runner-high", "ACTIVATIONS")
    try:
        for delivery in range(1, deliveries_before + 1):
            (msg,) = await sub.fetch(1, timeout=WAIT_S)
            assert msg.metadata.num_delivered == delivery
            request = decode_subject(msg.subject, msg.data)
            if delivery == 1:
                runlog = RunLog(rig.bus, request, 1, "trace", stream_seq=msg.metadata.sequence.stream)
                await runlog.finished(ended(request, outcome))
            await msg.nak()
    finally:
        await sub.unsubscribe()

    await rig.start()
    await all_handled(rig.bus)

    end = "RunFailed" if outcome == "failed" else "RunCompleted"
    assert kinds(await load_run(rig.bus, activation_id)) == [end]
    assert await dead_letters(rig.bus) == []
    assert rig.llm.requests == [] and rig.replies_by("echo", note.post_id) == []


async def test_a_republished_request_of_a_completed_activation_posts_and_ends_once(rig: Rig) -> None:
    await rig.add_agent("once")
    note = rig.hub.mention("once", "one answer please")
    rig.llm.set_script([{"text": "Only answer."}, {"text": "A second answer."}])
    await rig.start()
    activation_id, end, _ = await rig.activate("once", [note])
    assert end == "completed"
    await lease_released(rig.bus, "once")

    # As a redelivery looks when the server lost the ack with its state: the same request, a new msg id.
    await rig.publish("once", activation_id, [note], msg_id=f"again:{activation_id}")
    await all_handled(rig.bus)

    events = await load_run(rig.bus, activation_id)
    assert kinds(events) == ["RunStarted", "LlmTurn", "Posted", "RunCompleted"]
    assert await dead_letters(rig.bus) == []
    assert [c.content for c in rig.replies_by("once", note.post_id)] == ["Only answer."]
    assert len(rig.llm.requests) == 1


@pytest.mark.slow  # about 8 s: a warm-up activation, then redeliveries 2 s apart
async def test_a_nats_failure_before_the_lease_hands_the_request_back_soon(rig: Rig) -> None:
    # The lease is taken before the activation's own try: a NATS error there killed the handling task and
    # left the request unsettled (back only after the ack wait; on its last delivery, lost without a trace).
    await rig.add_agent("warm")
    await rig.add_agent("flaky")
    rig.llm.set_script([{"text": "Warm."}, {"text": "Leases are back."}])
    await rig.start()
    _, end, _ = await rig.activate("warm", [rig.hub.mention("warm", "up?")])
    assert end == "completed"

    await rig.bus.js.delete_key_value("leases")  # every lease call now fails: no stream answers
    note = rig.hub.mention("flaky", "still leasing?")
    activation_id = f"act-{uuid.uuid4().hex[:10]}"
    wait = await rig.ends_of("flaky", activation_id)
    await rig.publish("flaky", activation_id, [note])
    async def redelivered() -> bool:  # handed back, and delivered again
        return (await rig.bus.js.consumer_info("ACTIVATIONS", "runner-high")).num_redelivered >= 1

    await until(redelivered, WAIT_S, "the request delivered again")
    await ensure(rig.bus.js)  # the bucket is back

    assert await wait() == ["completed"]
    assert [c.content for c in rig.replies_by("flaky", note.post_id)] == ["Leases are back."]
    assert await dead_letters(rig.bus) == []
