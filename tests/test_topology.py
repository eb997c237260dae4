from nats.js.api import StreamConfig

from botburrow.runtime.bus import Bus
from streams.apply import STREAM_FIELDS, changes, ensure
from streams.topology import BUCKETS, CONSUMERS, STREAMS


async def test_ensure_is_idempotent_and_apply_updates(bus: Bus) -> None:
    again = await ensure(bus.js)
    assert all(line.endswith("exists") for line in again), again
    updated = await ensure(bus.js, update=True)
    assert len(updated) == len(STREAMS) + len(CONSUMERS) + len(BUCKETS)
    # Applying what is already there says so, object by object.
    assert all(line.endswith(": unchanged") for line in updated), updated
    for spec in CONSUMERS:
        info = await bus.js.consumer_info(spec.stream, spec.durable)
        assert info.config.ack_wait == spec.ack_wait_s


async def test_every_stream_keeps_a_replayable_log(bus: Bus) -> None:
    for spec in STREAMS:
        info = await bus.js.stream_info(spec.name)
        assert str(getattr(info.config.retention, "value", info.config.retention)) == "limits"


async def test_apply_changes_an_existing_bucket_and_the_runner_ack_wait(bus: Bus) -> None:
    lines = await ensure(bus.js, update=True, runner_ack_wait_s=7.0)
    assert "bucket leases: max_age 60.0 -> 7.0" in lines
    assert "consumer ACTIVATIONS/runner-high: ack_wait 60.0 -> 7.0" in lines
    leases = await bus.js.stream_info("KV_leases")
    assert leases.config.max_age == 7.0
    info = await bus.js.consumer_info("ACTIVATIONS", "runner-high")
    assert info.config.ack_wait == 7.0


async def test_every_consumer_follows_its_streams_replicas(bus: Bus) -> None:
    """No consumer has a count of its own (0: its stream's), so one apply moves them with their stream
    (tests/test_cluster.py moves a whole topology from R1 to R3 on three servers)."""
    for spec in CONSUMERS:
        info = await bus.js.consumer_info(spec.stream, spec.durable)
        assert not info.config.num_replicas, spec.durable
    for bucket in BUCKETS:
        assert (await bus.js.stream_info(bucket.stream)).config.num_replicas == 1


def test_changes_names_each_changed_field() -> None:
    old = StreamConfig(name="S", num_replicas=1, max_age=0, subjects=["a.>"])
    new = StreamConfig(name="S", num_replicas=3, max_age=60.0, subjects=["a.>"])
    assert changes(old, new, STREAM_FIELDS) == "replicas 1 -> 3, max_age None -> 60.0"
    assert changes(new, new, STREAM_FIELDS) == "unchanged"
