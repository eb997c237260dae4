"""No poison message (issue 14): hostile bytes through each stage's real consumer on a real nats-server.

For every subject a stage reads, a corpus of byte strings is published: cases drawn by Hypothesis
(random bytes, random JSON of any shape, the subject's valid payload with a field replaced, dropped,
cut short or a byte flipped) plus the named nasties (invalid UTF-8, JSON nested 50,000 deep, ~800 KB,
control characters, a valid payload for another agent than its subject's). Then a valid message for
every agent. Each case must end as a dead letter with a fitting reason (a large one cut to fit, with
its original size and stream sequence), the stage must stay ready with its consumers running, nothing
may be acted on for the wrong agent, and every valid message after the corpus must be handled.

Then: a killed scheduler partition task and a killed metrics consumer (the stage must say not ready,
start it again and handle the next message); a flood of large notifications for one agent (its queue is bounded,
its partition's other agents are still served); a message that breaks its handler (it fails alone and
is dead-lettered with the error, its batch-mates are handled once).

The default run draws FUZZ_EXAMPLES (6) cases per subject with a fixed seed (FUZZ_SEED, default 14);
`just fuzz` draws many more.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from nats.js.api import AckPolicy, ConsumerConfig
from prometheus_client import REGISTRY

from botburrow.cli.ops import load_run
from botburrow.doubles.hub_emulator import HubEmulator
from botburrow.runtime.bus import Bus
from botburrow.runtime.consumer import Item
from botburrow.runtime.service import StageBody, run_stage
from botburrow.runtime.worker import Batches, Worker
from schemas.codec import DecodeError, decode_subject, encode
from schemas.events import ActivationRequested, DeadLetter, NotificationReceived
from services.metrics import stage as metrics
from services.scheduler import stage as scheduler
from services.scheduler.partitions import partition_of
from services.scheduler.shell import MAX_PENDING_NOTIFICATIONS
from streams import subjects
from streams.topology import MAX_DELIVERIES, ConsumerSpec
from tests.fixtures.runner import Rig
from tests.fixtures.wait import until as wait_until
from tests.test_metrics_stage import ended
from tests.test_scheduler import Feed, add_agents, definition, feed, note, publish_notification, wait_for_state

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "6"))
FUZZ_SEED = int(os.environ.get("FUZZ_SEED", "14"))
WAIT_S = 30.0
NATS_MAX_PAYLOAD = 1 << 20
HUGE = 800_000


# --- the corpus -------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def drawn(valid: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """Random and near-valid byte strings for a subject whose valid payload is `valid`."""
    raw = _dumps(valid)
    keys = st.sampled_from(sorted(valid))
    return st.one_of(
        st.binary(max_size=600),
        JSON_VALUES.map(_dumps),
        st.tuples(keys, JSON_VALUES).map(lambda kv: _dumps({**valid, kv[0]: kv[1]})),
        keys.map(lambda key: _dumps({k: v for k, v in valid.items() if k != key})),
        st.integers(0, len(raw) - 1).map(lambda n: raw[:n]),
        st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)).map(
            lambda at: raw[:at[0]] + bytes([at[1]]) + raw[at[0] + 1:]),
    )


def draw(strategy: st.SearchStrategy[bytes], count: int) -> list[bytes]:
    """`count` examples of `strategy`, reproducibly (fixed seed, no example database)."""
    examples: list[bytes] = []

    @seed(FUZZ_SEED)
    @settings(max_examples=count, phases=[Phase.generate], database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(data: bytes) -> None:
        examples.append(data)

    collect()
    return examples[:count]


@dataclass
class Case:
    name: str
    subject: str
    data: bytes
    reason: str  # a fragment the dead letter's reason must contain


def named_nasties(subject: str, valid: dict[str, Any], other_agent: dict[str, Any]) -> list[Case]:
    raw = _dumps(valid)
    deep_inside = _dumps({**valid, "extra": "@deep@"}).replace(b'"@deep@"', b"[" * 16_000 + b"]" * 16_000)
    return [
        Case("invalid-utf8", subject, b"\xff\xfe\xfd" + raw, "malformed JSON"),
        Case("utf8-in-string", subject, raw.replace(b'": "', b'": "\xc3\x28', 1), "UTF-8"),
        Case("deep-50000", subject, b"[" * 50_000 + b"]" * 50_000, ""),  # too deep, or too big for the subject
        Case("deep-16000-inside", subject, deep_inside, "nested deeper than"),
        Case("huge-garbage", subject, b"x" * HUGE, ""),
        Case("huge-control", subject, b"\x01" * HUGE, ""),
        Case("huge-valid-shape", subject, _dumps({**valid, "pad": "y" * HUGE}), ""),
        Case("empty", subject, b"", "malformed JSON"),
        Case("null", subject, b"null", "Expected `object`"),
        Case("other-agent", subject, _dumps(other_agent), "differs from the subject"),
    ]


def corpus(subject: str, valid: dict[str, Any], other_agent: dict[str, Any]) -> list[Case]:
    """The named nasties and FUZZ_EXAMPLES drawn cases, keeping only what the subject's schema refuses
    (a drawn case may happen to be valid: that one is not hostile, it is just handled)."""
    cases = named_nasties(subject, valid, other_agent)
    cases += [Case(f"drawn-{i}", subject, data, "") for i, data in enumerate(draw(drawn(valid), FUZZ_EXAMPLES))]
    return [case for case in cases if _refused(case)]


def _refused(case: Case) -> bool:
    try:
        decode_subject(case.subject, case.data)
    except DecodeError:
        return True
    return False


# --- running them -----------------------------------------------------------------------------------


async def publish_cases(bus: Bus, cases: list[Case]) -> dict[str, Case]:
    by_id = {}
    for case in cases:
        case_id = f"{case.name}-{uuid.uuid4().hex[:6]}"
        by_id[case_id] = case
        await bus.js.publish(case.subject, case.data, headers={"Case": case_id})
    return by_id


async def letters_for(dlq: Feed, cases: Mapping[str, Case]) -> dict[str, DeadLetter]:
    """The dead letter of every case (by the `Case` header they carry), in whatever order they come."""
    letters: dict[str, DeadLetter] = {}
    while set(cases) - set(letters):
        letter, _ = await dlq.next(DeadLetter)
        if letter.headers.get("Case") in cases:
            letters[letter.headers["Case"]] = letter
    return letters


def check_letters(cases: Mapping[str, Case], letters: Mapping[str, DeadLetter], fits: Callable[[Case, str], bool]
                  ) -> None:
    for case_id, case in cases.items():
        letter = letters[case_id]
        where = f"case {case.name} (FUZZ_SEED={FUZZ_SEED}) {case.data[:80]!r}: {letter.reason[:200]}"
        assert letter.subject == case.subject and letter.stream and letter.seq > 0, where
        assert case.reason in letter.reason and fits(case, letter.reason), where
        assert letter.payload_bytes == len(case.data), where
        assert len(encode(letter)) < NATS_MAX_PAYLOAD, where
        if len(case.data) > 256 << 10:
            assert letter.payload_truncated, where


def invalid_payload(case: Case, reason: str) -> bool:
    return reason.startswith("invalid payload: ")


@contextlib.asynccontextmanager
async def stage(name: str, body: StageBody, environ: dict[str, str]) -> AsyncIterator[str]:
    """The stage in-process; yields its /readyz URL."""
    stop = asyncio.Event()
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_stage(name, body, environ={"METRICS_PORT": "0", **environ}, stop=stop,
                                         on_ready_port=port.set_result))
    try:
        yield f"http://127.0.0.1:{await asyncio.wait_for(port, WAIT_S)}/readyz"
        assert not task.done(), "the stage ended"
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_S)


async def readiness(url: str, until: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Poll /readyz (a state with no event to await) until `until` holds for its answer."""
    async with httpx.AsyncClient() as http:
        async def answer_if() -> dict[str, Any] | None:
            response = await http.get(url)
            answer = {"status": response.status_code, **response.json()}
            return answer if until(answer) else None

        return await wait_until(answer_if, WAIT_S, "a readiness answer")


def ready_with_tasks(answer: dict[str, Any]) -> bool:
    return answer["status"] == 200 and any(name.startswith("task:") for name in answer["checks"])


def notification_payload(agent: str, notification_id: str = "n-1") -> dict[str, Any]:
    return json.loads(encode(NotificationReceived(agent=agent, notification=note(notification_id))))


# --- the stages -------------------------------------------------------------------------------------


async def test_the_scheduler_survives_any_bytes_on_its_subjects(bus: Bus, nats_url: str) -> None:
    agents = ["fz-ann", "fz-bob", "fz-cy", "fz-dee"]
    await add_agents(bus, *(definition(agent) for agent in agents))
    ann, bob = agents[:2]
    ended_ann = json.loads(encode(ended(ann, 1)))
    cases = corpus(subjects.notification(ann), notification_payload(ann),
                   notification_payload(bob, "wrong-agent"))
    cases += corpus(subjects.run_event(ann, ended_ann["activation_id"], "completed"), ended_ann,
                    json.loads(encode(ended(bob, 1))))
    environ = {"NATS_URL": nats_url, "HUB_URL": "http://127.0.0.1:9", "SCHEDULER_TICK_SECONDS": "0.05"}
    async with feed(bus, "agents.dlq.scheduler") as dlq, feed(bus, "agents.sched.activation.>") as requests, \
            stage("scheduler", scheduler.run, environ) as readyz:
        await readiness(readyz, ready_with_tasks)
        published = await publish_cases(bus, cases)
        check_letters(published, await letters_for(dlq, published), invalid_payload)

        for agent in agents:  # the next valid message of every agent, whatever partition it is in
            await publish_notification(bus, agent, note(f"after-{agent}"))
        handled = [(await requests.next(ActivationRequested))[0] for _ in agents]
        assert sorted((r.agent, [n.id for n in r.notifications]) for r in handled) == \
            sorted((agent, [f"after-{agent}"]) for agent in agents)  # nothing for `wrong-agent`
        answer = await readiness(readyz, lambda a: True)
        assert answer["status"] == 200, answer


async def test_the_runner_survives_any_bytes_on_its_subjects(rig: Rig) -> None:
    await rig.add_agent("fz-echo")
    mention = rig.hub.mention("fz-echo", "still there?")
    rig.llm.set_script([{"text": "Still here."}])
    valid = json.loads(encode(ActivationRequested(activation_id="act-fz", agent="fz-echo", kind="notification",
                                                  priority="high", notifications=[mention])))
    other = {**valid, "agent": "fz-other", "activation_id": "act-wrong-agent"}
    cases = corpus(subjects.activation("high", "fz-echo"), valid, other)
    for priority in ("normal", "low"):  # each priority is a durable of its own
        cases += named_nasties(subjects.activation(priority, "fz-echo"), {**valid, "priority": priority}, other)[:4]
    cases.append(Case("other-priority", subjects.activation("high", "fz-echo"),
                      _dumps({**valid, "priority": "low", "activation_id": "act-wrong-priority"}), "differs"))
    async with feed(rig.bus, "agents.dlq.runner") as dlq:
        await rig.start()
        published = await publish_cases(rig.bus, cases)
        check_letters(published, await letters_for(dlq, published), invalid_payload)

        _, end, _ = await rig.activate("fz-echo", [mention])
        assert end == "completed" and [c.content for c in rig.replies_by("fz-echo", mention.post_id)] == ["Still here."]
        for refused in ("act-wrong-agent", "act-wrong-priority", "act-fz"):
            assert await load_run(rig.bus, refused) == []  # never started: no event, no model call
        assert len(rig.llm.requests) == 1
        assert rig.task is not None and not rig.task.done()


async def test_metrics_survives_any_bytes_on_its_subjects(bus: Bus, nats_url: str,
                                                          hub_emulator: HubEmulator) -> None:
    ann, bob = "fz-ann", "fz-bob"
    valid = json.loads(encode(ended(ann, 1)))
    subject = subjects.run_event(ann, valid["activation_id"], "completed")
    cases = corpus(subject, valid, json.loads(encode(ended(bob, 1))))
    cases.append(Case("failed-on-completed", subject, encode(ended(ann, 1, failed=True)), "differs"))
    # Well formed and addressed, but its consumption names another agent: the Hub must not believe it.
    genuine = ended(ann, 7)
    forged = msgspec.structs.replace(genuine, metrics=msgspec.structs.replace(genuine.metrics, agent_id=bob))
    cases.append(Case("forged-metrics", subjects.run_event(ann, forged.activation_id, "completed"), encode(forged),
                      "not the event's"))
    environ = {"NATS_URL": nats_url, "HUB_URL": hub_emulator.url, "HUB_API_KEY": hub_emulator.system_key,
               "CONSUMPTION_FLUSH_SECONDS": "0.2"}
    async with feed(bus, "agents.dlq.metrics") as dlq, stage("metrics", metrics.run, environ) as readyz:
        await readiness(readyz, ready_with_tasks)
        published = await publish_cases(bus, cases)
        check_letters(published, await letters_for(dlq, published),
                      lambda case, reason: case.name == "forged-metrics" or invalid_payload(case, reason))

        for agent in (ann, bob):
            event = ended(agent, 2)
            await bus.publish(subjects.run_event(agent, event.activation_id, "completed"), event)
        await wait_until(lambda: len(hub_emulator.consumption) >= 2, WAIT_S, "two consumption reports")
        assert sorted(m.activation_id for m in hub_emulator.consumption) == [f"act-{ann}-2", f"act-{bob}-2"]
        assert (await readiness(readyz, lambda a: True))["status"] == 200


# --- a task that dies -------------------------------------------------------------------------------


def restarts(stage_name: str, task: str) -> float:
    return REGISTRY.get_sample_value("botburrow_task_restarts_total", {"stage": stage_name, "task": task}) or 0.0


async def test_a_dead_partition_task_makes_the_scheduler_not_ready_and_is_restarted(bus: Bus, nats_url: str) -> None:
    agent = "fz-phoenix"
    await add_agents(bus, definition(agent))
    task_name = f"partition-{partition_of(agent)}"
    environ = {"NATS_URL": nats_url, "HUB_URL": "http://127.0.0.1:9", "SCHEDULER_TICK_SECONDS": "0.05"}
    async with feed(bus, "agents.sched.activation.>") as requests, \
            stage("scheduler", scheduler.run, environ) as readyz:
        await readiness(readyz, lambda a: a["status"] == 200 and a["checks"].get(f"task:{task_name}") is True)
        before = restarts("scheduler", task_name)
        (consumer,) = [t for t in asyncio.all_tasks() if t.get_name() == f"scheduler:{task_name}"]
        consumer.cancel()  # as any death of the loop would end it

        down = await readiness(readyz, lambda a: a["status"] == 503)
        assert down["checks"][f"task:{task_name}"] is False
        await readiness(readyz, lambda a: a["status"] == 200 and a["checks"].get(f"task:{task_name}") is True)
        assert restarts("scheduler", task_name) == before + 1

        await publish_notification(bus, agent, note("after-restart"))
        request, _ = await requests.next(ActivationRequested)
        assert (request.agent, [n.id for n in request.notifications]) == (agent, ["after-restart"])


async def test_a_flood_of_large_notifications_for_one_agent_does_not_wedge_its_partition(
        bus: Bus, nats_url: str) -> None:
    # Strangers can mention an agent as often as they like, each with a long text: its queued notifications
    # live in one `agent-state` value, which must stay writable (NATS's 1 MiB), or every batch of the
    # partition fails behind it.
    flooded = "fz-flooded"
    neighbour = next(f"fz-n{i}" for i in range(1000) if partition_of(f"fz-n{i}") == partition_of(flooded))
    await add_agents(bus, definition(flooded), definition(neighbour))
    text = "z" * (30 << 10)
    flood = [note(f"flood-{i}") for i in range(40)]
    assert MAX_PENDING_NOTIFICATIONS < len(flood) and MAX_PENDING_NOTIFICATIONS * (32 << 10) < NATS_MAX_PAYLOAD
    environ = {"NATS_URL": nats_url, "HUB_URL": "http://127.0.0.1:9", "SCHEDULER_TICK_SECONDS": "0.05"}
    async with feed(bus, "agents.dlq.scheduler") as dlq, feed(bus, "agents.sched.activation.>") as requests, \
            stage("scheduler", scheduler.run, environ) as readyz:
        await readiness(readyz, ready_with_tasks)
        await publish_notification(bus, flooded, note("first"))
        first, _ = await requests.next(ActivationRequested)
        assert (first.agent, [n.id for n in first.notifications]) == (flooded, ["first"])
        for n in flood:  # all wait for the first activation to end
            await publish_notification(bus, flooded, msgspec.structs.replace(n, content=text))
        letters = [(await dlq.next(DeadLetter))[0] for _ in range(len(flood) - MAX_PENDING_NOTIFICATIONS)]
        assert all("notifications waiting" in letter.reason for letter in letters), letters[0].reason
        state = await wait_for_state(await bus.kv("agent-state"), flooded,
                                     lambda s: len(s.pending) == MAX_PENDING_NOTIFICATIONS)
        assert [n.id for n in state.pending] == [n.id for n in flood[:MAX_PENDING_NOTIFICATIONS]]

        await publish_notification(bus, neighbour, note("neighbour-1"))
        request, _ = await requests.next(ActivationRequested)
        assert (request.agent, [n.id for n in request.notifications]) == (neighbour, ["neighbour-1"])


async def test_a_message_that_breaks_its_handler_fails_alone_and_is_dead_lettered_with_the_error(bus: Bus) -> None:
    # A handler bug that one message's content triggers (here: a handler that cannot take `bad`) must cost
    # that message only: its batch-mates are handled once, it is dead-lettered with the error, the loop goes on.
    await bus.js.add_consumer("NOTIFICATIONS", ConsumerConfig(
        durable_name="fuzz-batch", ack_policy=AckPolicy.EXPLICIT, ack_wait=30, max_deliver=MAX_DELIVERIES + 1))
    handled: list[str] = []

    async def handler(items: list[Item]) -> None:
        if any(item.payload.notification.id == "bad" for item in items):
            raise RuntimeError("the handler cannot take notification bad")
        handled.extend(item.payload.notification.id for item in items)

    ids = ["ok-1", "ok-2", "bad", "ok-3", "ok-4"]
    for notification_id in ids:
        await publish_notification(bus, "fz-batch", note(notification_id))
    stop = asyncio.Event()
    async with feed(bus, "agents.dlq.fuzz") as dlq:
        consumer = ConsumerSpec(stream="NOTIFICATIONS", durable="fuzz-batch", filter_subjects=[], ack_wait_s=30,
                                max_deliver=MAX_DELIVERIES + 1, max_ack_pending=100)
        worker = Worker.of(bus, "fuzz", [consumer], Batches(batch=10, wait_s=0.2), handler, batch_size=10)
        loop = asyncio.create_task(worker.run(stop))
        try:
            letter, _ = await dlq.next(DeadLetter)  # after MAX_DELIVERIES one-second redeliveries
            assert not loop.done()
        finally:
            stop.set()
            await asyncio.wait_for(loop, WAIT_S)
    assert sorted(handled) == ["ok-1", "ok-2", "ok-3", "ok-4"]  # each once
    assert letter.reason == (f"gave up after {MAX_DELIVERIES} deliveries: "
                             "RuntimeError: the handler cannot take notification bad")
    assert json.loads(letter.payload)["notification"]["id"] == "bad"


async def test_a_dead_metrics_consumer_makes_the_stage_not_ready_and_is_restarted(
        bus: Bus, nats_url: str, hub_emulator: HubEmulator) -> None:
    environ = {"NATS_URL": nats_url, "HUB_URL": hub_emulator.url, "HUB_API_KEY": hub_emulator.system_key,
               "CONSUMPTION_FLUSH_SECONDS": "0.2"}
    async with stage("metrics", metrics.run, environ) as readyz:
        await readiness(readyz, lambda a: a["status"] == 200 and a["checks"].get("task:consumer") is True)
        before = restarts("metrics", "consumer")
        (consumer,) = [t for t in asyncio.all_tasks() if t.get_name() == "metrics:consumer"]
        consumer.cancel()

        down = await readiness(readyz, lambda a: a["status"] == 503)
        assert down["checks"]["task:consumer"] is False
        await readiness(readyz, lambda a: a["status"] == 200)
        assert restarts("metrics", "consumer") == before + 1

        event = ended("fz-after", 1)
        await bus.publish(subjects.run_event(event.agent, event.activation_id, "completed"), event)
        await wait_until(lambda: hub_emulator.consumption, WAIT_S, "a consumption report")
        assert [m.activation_id for m in hub_emulator.consumption] == ["act-fz-after-1"]
