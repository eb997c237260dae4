"""The scheduler's partition reader (`Puller`) on a real nats-server: batches of what has arrived, in
stream order, and a stopped reader that leaves nothing in transit (so a partition's next owner gets
every message at once, not after the consumer's ack_wait)."""

from __future__ import annotations

from nats.aio.msg import Msg

from botburrow.runtime.bus import Bus
from services.scheduler.partitions import partition_of
from services.scheduler.puller import Puller
from streams.topology import scheduler_durable
from tests.fixtures.wait import until
from tests.test_scheduler import WAIT_S, note, publish_notification

PARTITION = 3
AGENTS = [agent for agent in (f"agent-{i}" for i in range(400)) if partition_of(agent) == PARTITION]


async def sourced(bus: Bus, count: int) -> None:
    """Until the partition's consumer has `count` messages waiting (sourcing is asynchronous)."""
    async def waiting() -> bool:
        return (await bus.js.consumer_info("SCHEDULER", scheduler_durable(PARTITION))).num_pending >= count

    await until(waiting, WAIT_S, f"{count} messages sourced")


async def read(puller: Puller, count: int) -> list[list[Msg]]:
    batches: list[list[Msg]] = []
    while sum(map(len, batches)) < count:
        batch = await puller.next_batch(WAIT_S)
        assert batch, "nothing arrived"
        batches.append(batch)
    return batches


async def test_batches_in_order_and_a_stopped_puller_leaves_nothing_in_transit(bus: Bus) -> None:
    for agent in AGENTS[:25]:
        await publish_notification(bus, agent, note(f"n-{agent}"))
    await sourced(bus, 25)

    puller = Puller(bus.nc, "SCHEDULER", scheduler_durable(PARTITION), batch=10, expires_s=0.5)
    await puller.start()
    batches = await read(puller, 1)
    puller.pulling = False  # stopping: what its request still brings is handed over, nothing more asked
    while not puller.drained:
        batches.append(await puller.next_batch(0.1))
    await puller.close()
    assert max(map(len, batches)) <= 10  # what had arrived, up to the batch size
    first = [msg for batch in batches for msg in batch]
    assert 1 <= len(first) <= 20  # at most its two requests: the rest stayed on the server
    for msg in first:
        await msg.ack()

    successor = Puller(bus.nc, "SCHEDULER", scheduler_durable(PARTITION), batch=100, expires_s=0.5)
    await successor.start()
    try:
        rest = [msg for batch in await read(successor, 25 - len(first)) for msg in batch]
    finally:
        await successor.close()
    assert [msg.subject.rsplit(".", 1)[1] for msg in first + rest] == AGENTS[:25]  # stream order, each once
    assert {msg.metadata.num_delivered for msg in rest} == {1}  # none went to the closed inbox first


async def test_only_jetstream_deliveries_are_handed_over(bus: Bus) -> None:
    # Anyone who learns a puller's inbox could publish to it: such a message is not a delivery of the
    # partition's consumer (no ack subject to settle it by) and is never handed to the scheduler.
    puller = Puller(bus.nc, "SCHEDULER", scheduler_durable(PARTITION), batch=10, expires_s=0.5)
    await puller.start()
    try:
        await bus.nc.publish(puller._inbox, b'{"v": 1, "agent": "x", "notification": {"id": "forged", "type": "dm"}}')
        await publish_notification(bus, AGENTS[0], note("real"))
        (batch,) = await read(puller, 1)
        assert [msg.reply.startswith("$JS.ACK.") for msg in batch] == [True]
        assert b"forged" not in batch[0].data
        await batch[0].ack()
    finally:
        await puller.close()
