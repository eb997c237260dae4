from botburrow.runtime.bus import Bus
from streams.apply import ensure
from streams.topology import BUCKETS, CONSUMERS, STREAMS


async def test_ensure_is_idempotent_and_apply_updates(bus: Bus) -> None:
    again = await ensure(bus.js)
    assert all(line.endswith("exists") for line in again), again
    updated = await ensure(bus.js, update=True)
    assert len(updated) == len(STREAMS) + len(CONSUMERS) + len(BUCKETS)
    for spec in CONSUMERS:
        info = await bus.js.consumer_info(spec.stream, spec.durable)
        assert info.config.ack_wait == spec.ack_wait_s


async def test_every_stream_keeps_a_replayable_log(bus: Bus) -> None:
    for spec in STREAMS:
        info = await bus.js.stream_info(spec.name)
        assert str(getattr(info.config.retention, "value", info.config.retention)) == "limits"


async def test_apply_changes_an_existing_bucket_and_the_runner_ack_wait(bus: Bus) -> None:
    await ensure(bus.js, update=True, runner_ack_wait_s=7.0)
    leases = await bus.js.stream_info("KV_leases")
    assert leases.config.max_age == 7.0
    info = await bus.js.consumer_info("ACTIVATIONS", "runner-high")
    assert info.config.ack_wait == 7.0
