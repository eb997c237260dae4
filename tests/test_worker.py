"""The shared worker on a real nats-server: its one settle rule, driven with `run_until_idle()` (no polling,
no sleeps: it returns once the consumer has nothing pending or unacknowledged and no job runs)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import msgspec
from nats.js.api import AckPolicy, ConsumerConfig

from botburrow.cli.read import read_all
from botburrow.runtime.bus import Bus
from botburrow.runtime.consumer import DeadLetters, Item, Retry, Settler
from botburrow.runtime.worker import Batches, PriorityRounds, Worker
from schemas.events import DeadLetter
from services.scheduler.puller import PartitionFetch
from streams import subjects
from streams.topology import MAX_DELIVERIES, SCHEDULER_CONSUMERS, ConsumerSpec, scheduler_durable
from tests.fixtures.wait import until
from tests.test_scheduler import WAIT_S, note, publish_notification
from tests.test_scheduler_puller import AGENTS, PARTITION, sourced

STAGE = "worker-test"


async def consumer(bus: Bus, durable: str, filter_subject: str = "agents.ingest.notification.>") -> ConsumerSpec:
    spec = ConsumerSpec(stream="NOTIFICATIONS", durable=durable, filter_subjects=[filter_subject], ack_wait_s=30,
                        max_deliver=MAX_DELIVERIES + 1, max_ack_pending=100)
    await bus.js.add_consumer("NOTIFICATIONS", ConsumerConfig(
        durable_name=durable, filter_subject=filter_subject, ack_policy=AckPolicy.EXPLICIT, ack_wait=30,
        max_deliver=MAX_DELIVERIES + 1))
    return spec


async def letters(bus: Bus) -> list[DeadLetter]:
    return [msgspec.json.decode(m.data, type=DeadLetter) for m in await read_all(bus, "DLQ", subjects.dlq(STAGE))]


async def test_one_settle_rule_done_retry_reject_undecodable_crash_and_over_delivered(bus: Bus) -> None:
    seen: Counter[str] = Counter()
    done: list[str] = []

    async def handler(items: list[Item]) -> None:
        (item,) = items
        notification_id = item.payload.notification.id
        seen[notification_id] += 1
        if notification_id == "retry-once" and seen[notification_id] == 1:
            raise Retry(0.05, "not yet")
        if notification_id == "crash-once" and seen[notification_id] == 1:
            raise RuntimeError("first time unlucky")
        if notification_id == "always-crashes":
            raise RuntimeError("never works")
        if notification_id == "refused":
            item.reject("refused by the handler", "$.notification")
            return
        done.append(notification_id)

    for notification_id in ("ok", "retry-once", "crash-once", "refused", "always-crashes"):
        await publish_notification(bus, "wt", note(notification_id))
    await bus.publish(subjects.notification("wt"), b'{"v": 1, "agent": "wt", "notification": {"id": 7}}')
    settler = Settler(DeadLetters(bus, STAGE), handler, consumer="wt", backoff_s=lambda deliveries: 0.05)
    worker = Worker(bus, STAGE, [await consumer(bus, "wt")], Batches(batch=10, wait_s=0.1), settler)

    await worker.run_until_idle()

    assert sorted(done) == ["crash-once", "ok", "retry-once"]
    assert seen["retry-once"] == seen["crash-once"] == 2 and seen["ok"] == 1
    assert seen["always-crashes"] == MAX_DELIVERIES
    exhausted, invalid, refused = sorted(await letters(bus), key=lambda letter: letter.reason)
    assert (refused.reason, refused.error_path) == ("refused by the handler", "$.notification")
    assert json.loads(refused.payload)["notification"]["id"] == "refused"
    assert invalid.reason.startswith("invalid payload") and invalid.error_path == "$.notification.id"
    assert exhausted.reason == f"gave up after {MAX_DELIVERIES} deliveries: RuntimeError: never works"
    info = await bus.js.consumer_info("NOTIFICATIONS", "wt")
    assert info.num_pending == 0 and info.num_ack_pending == 0 and not worker.running


async def test_priority_rounds_take_the_highest_first_and_the_lowest_every_nth_round(bus: Bus) -> None:
    order: list[str] = []

    async def handler(items: list[Item]) -> None:
        order.extend(item.payload.agent for item in items)

    for index, agent in enumerate(("lo", "lo", "hi", "hi", "hi")):
        await publish_notification(bus, agent, note(f"n-{index}"))
    high = await consumer(bus, "wt-high", subjects.notification("hi"))
    low = await consumer(bus, "wt-low", subjects.notification("lo"))
    worker = Worker.of(bus, STAGE, [high, low], PriorityRounds(low_share=3, busy_wait_s=0.05, idle_wait_s=0.1),
                       handler)

    await worker.run_until_idle()

    # Round 0 lets the lowest go first; rounds 1 and 2 take the highest; round 3 the lowest again.
    assert order == ["lo", "hi", "hi", "lo", "hi"]


async def test_a_stopped_partition_worker_hands_back_what_is_in_transit_once(bus: Bus) -> None:
    # Stopped with its pull request open: what that request still brings is handed back once the request
    # has ended. Handed back at once, it came straight back into the open request (a delivery each time)
    # until the server dropped it past max_deliver, and the partition's next owner never saw it.
    stop, started = asyncio.Event(), asyncio.Event()
    agents = AGENTS[:6]

    async def hold_until_stopped(items: list[Item]) -> None:
        started.set()
        await stop.wait()

    async def delivered(count: int) -> bool:
        info = await bus.js.consumer_info(SCHEDULER_CONSUMERS[PARTITION].stream, scheduler_durable(PARTITION))
        return info.num_ack_pending >= count

    for agent in agents[:3]:
        await publish_notification(bus, agent, note(f"first-{agent}"))
    await sourced(bus, 3)
    fetch = PartitionFetch(bus.nc, batch=100, expires_s=1.0, owned=lambda: True)
    consumers = [SCHEDULER_CONSUMERS[PARTITION]]
    running = asyncio.create_task(Worker.of(bus, STAGE, consumers, fetch, hold_until_stopped, batch_size=100).run(stop))
    await asyncio.wait_for(started.wait(), WAIT_S)
    for agent in agents[3:]:  # on their way to the open request while the first job runs
        await publish_notification(bus, agent, note(f"second-{agent}"))
    await until(lambda: delivered(6), WAIT_S, "the second three delivered into the open request")
    stop.set()
    await asyncio.wait_for(running, WAIT_S)

    deliveries: dict[str, int] = {}

    async def record(items: list[Item]) -> None:
        deliveries.update((item.payload.notification.id, item.deliveries) for item in items)

    successor = PartitionFetch(bus.nc, batch=100, expires_s=0.2, owned=lambda: True)
    await Worker.of(bus, STAGE, consumers, successor, record, batch_size=100).run_until_idle()
    # Every one that was on its way comes once more (a first one too, when it arrived after the first job began).
    assert {f"second-{agent}" for agent in agents[3:]} <= set(deliveries) and set(deliveries.values()) == {2}
