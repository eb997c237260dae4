"""Create (and with `update=True`, reconcile) every stream, consumer and bucket of the topology.

Stages call `ensure(js)` at start-up: it creates what is missing and leaves existing objects alone.
Only `botburrow streams apply` passes `update=True` and changes existing ones (contract §5), saying
for each what changed (`replicas 1 -> 3`) or `unchanged`. Replicas (`STREAM_REPLICAS`) reach every
stream and bucket; consumers are created without their own count, so they follow their stream's: one
apply moves an R1 topology to R3 in place, the servers copying what each stream holds to the new peers.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import msgspec
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
    SubjectTransform,
)
from nats.js.errors import BucketNotFoundError, NotFoundError

from streams.topology import (
    BUCKETS,
    CONSUMERS,
    LEASES,
    RUNNER_ACK_WAIT_S,
    RUNNER_CONSUMERS,
    STREAMS,
    BucketSpec,
    ConsumerSpec,
    StreamSpec,
)

log = logging.getLogger(__name__)


def stream_config(spec: StreamSpec, replicas: int) -> StreamConfig:
    sources = [
        StreamSource(name=source.stream,
                     subject_transforms=[SubjectTransform(src=t.src, dest=t.dest) for t in source.transforms])
        for source in spec.sources
    ]
    return StreamConfig(
        name=spec.name,
        description=spec.description or None,
        subjects=spec.subjects or None,
        sources=sources or None,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_age=spec.max_age_s,
        max_bytes=spec.max_bytes,
        discard=DiscardPolicy.OLD,
        duplicate_window=spec.duplicate_window_s,
        allow_direct=True,
    )


def consumer_config(spec: ConsumerSpec) -> ConsumerConfig:
    filters = spec.filter_subjects
    return ConsumerConfig(
        durable_name=spec.durable,
        description=spec.description or None,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=spec.ack_wait_s,
        max_deliver=spec.max_deliver,
        max_ack_pending=spec.max_ack_pending,
        filter_subject=filters[0] if len(filters) == 1 else None,
        filter_subjects=filters if len(filters) > 1 else None,
    )


def bucket_config(spec: BucketSpec, replicas: int) -> KeyValueConfig:
    return KeyValueConfig(
        bucket=spec.name,
        description=spec.description or None,
        history=spec.history,
        ttl=spec.ttl_s or None,
        storage=StorageType.FILE,
        replicas=replicas,
        direct=True,
    )


async def _ensure_consumer(js: JetStreamContext, consumer: ConsumerSpec, update: bool) -> str:
    name = f"consumer {consumer.stream}/{consumer.durable}"
    try:
        old = (await js.consumer_info(consumer.stream, consumer.durable)).config
    except NotFoundError:
        await js.add_consumer(consumer.stream, consumer_config(consumer))
        return f"{name}: created"
    if not update:
        return f"{name}: exists"
    # add_consumer with an existing durable name updates its mutable settings.
    config = consumer_config(consumer)
    await js.add_consumer(consumer.stream, config)
    return f"{name}: {changes(old, config, CONSUMER_FIELDS)}"


# What `streams apply` reports as changed, per kind of object (fields of nats-py's config classes).
STREAM_FIELDS = ("num_replicas", "subjects", "max_age", "max_bytes", "duplicate_window", "description")
CONSUMER_FIELDS = ("ack_wait", "max_deliver", "max_ack_pending", "filter_subject", "filter_subjects", "description")


def changes(old: object, new: object, fields: tuple[str, ...]) -> str:
    """`replicas 1 -> 3, max_age 0 -> 604800` for the fields that differ ('unchanged' when none do).
    The server reports 0 and None alike for unset numbers, and an empty list for no list."""
    def norm(value: object) -> object:
        return None if value in (0, None, [], "") else value

    diffs = [f"{name.removeprefix('num_')} {norm(getattr(old, name, None))} -> {norm(getattr(new, name, None))}"
             for name in fields if norm(getattr(old, name, None)) != norm(getattr(new, name, None))]
    return ", ".join(diffs) or "unchanged"


async def _update_bucket(js: JetStreamContext, spec: BucketSpec, replicas: int) -> str:
    # nats-py's create_key_value only adds (an existing bucket with other settings is error 10058):
    # a bucket is the stream KV_<name>, so change that stream's settings directly.
    config = (await js.stream_info(spec.stream)).config
    before = SimpleNamespace(**{f: getattr(config, f, None) for f in _BUCKET_FIELDS})
    config.max_age = spec.ttl_s or 0
    if config.max_age and config.duplicate_window and config.duplicate_window > config.max_age:
        config.duplicate_window = config.max_age  # the server refuses a window longer than the TTL
    config.max_msgs_per_subject = spec.history
    config.num_replicas = replicas
    config.description = spec.description or None
    after = SimpleNamespace(**{f: getattr(config, f, None) for f in _BUCKET_FIELDS})
    await js.update_stream(config)
    return changes(before, after, _BUCKET_FIELDS)


_BUCKET_FIELDS = ("num_replicas", "max_age", "max_msgs_per_subject", "description")


def with_runner_ack_wait(runner_ack_wait_s: float) -> tuple[list[ConsumerSpec], list[BucketSpec]]:
    """The runner consumers' ack wait and the leases TTL move together (RUNNER_ACK_WAIT_SECONDS)."""
    runner = {c.durable for c in RUNNER_CONSUMERS.values()}
    consumers = [msgspec.structs.replace(c, ack_wait_s=runner_ack_wait_s) if c.durable in runner else c
                 for c in CONSUMERS]
    buckets = [msgspec.structs.replace(b, ttl_s=runner_ack_wait_s) if b == LEASES else b for b in BUCKETS]
    return consumers, buckets


async def ensure(js: JetStreamContext, *, update: bool = False, replicas: int = 1,
                 runner_ack_wait_s: float = RUNNER_ACK_WAIT_S) -> list[str]:
    """Make the topology exist; returns a line per object saying what was done (for progress output)."""
    consumers, buckets = with_runner_ack_wait(runner_ack_wait_s)
    done: list[str] = []
    for spec in STREAMS:
        config = stream_config(spec, replicas)
        try:
            old = (await js.stream_info(spec.name)).config
        except NotFoundError:
            await js.add_stream(config)
            done.append(f"stream {spec.name}: created")
            continue
        if update:
            await js.update_stream(config)
            done.append(f"stream {spec.name}: {changes(old, config, STREAM_FIELDS)}")
        else:
            done.append(f"stream {spec.name}: exists")
    for consumer in consumers:
        done.append(await _ensure_consumer(js, consumer, update))
    for bucket in buckets:
        try:
            await js.key_value(bucket.name)
            exists = True
        except BucketNotFoundError:
            exists = False
        if not exists:
            await js.create_key_value(bucket_config(bucket, replicas))
            done.append(f"bucket {bucket.name}: created")
        elif update:
            done.append(f"bucket {bucket.name}: {await _update_bucket(js, bucket, replicas)}")
        else:
            done.append(f"bucket {bucket.name}: exists")
    for line in done:
        log.debug("topology", extra={"detail": line})
    return done
