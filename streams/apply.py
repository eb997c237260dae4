"""Create (and with `update=True`, reconcile) every stream, consumer and bucket of the topology.

Stages call `ensure(js)` at start-up: it creates what is missing and leaves existing objects alone.
Only `botburrow streams apply` passes `update=True` and changes existing ones (contract §5).
"""

from __future__ import annotations

import logging

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


def _verb(exists: bool, update: bool) -> str:
    if not exists:
        return "created"
    return "updated" if update else "exists"


async def _update_bucket(js: JetStreamContext, spec: BucketSpec, replicas: int) -> None:
    # nats-py's create_key_value only adds (an existing bucket with other settings is error 10058):
    # a bucket is the stream KV_<name>, so change that stream's settings directly.
    config = (await js.stream_info(spec.stream)).config
    config.max_age = spec.ttl_s or 0
    if config.max_age and config.duplicate_window and config.duplicate_window > config.max_age:
        config.duplicate_window = config.max_age  # the server refuses a window longer than the TTL
    config.max_msgs_per_subject = spec.history
    config.num_replicas = replicas
    config.description = spec.description or None
    await js.update_stream(config)


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
            await js.stream_info(spec.name)
        except NotFoundError:
            await js.add_stream(config)
            done.append(f"stream {spec.name}: created")
            continue
        if update:
            await js.update_stream(config)
            done.append(f"stream {spec.name}: updated")
        else:
            done.append(f"stream {spec.name}: exists")
    for consumer in consumers:
        exists = True
        try:
            await js.consumer_info(consumer.stream, consumer.durable)
        except NotFoundError:
            exists = False
        if not exists or update:
            # add_consumer with an existing durable name updates its mutable settings.
            await js.add_consumer(consumer.stream, consumer_config(consumer))
        done.append(f"consumer {consumer.stream}/{consumer.durable}: {_verb(exists, update)}")
    for bucket in buckets:
        try:
            await js.key_value(bucket.name)
            exists = True
        except BucketNotFoundError:
            exists = False
        if not exists:
            await js.create_key_value(bucket_config(bucket, replicas))
        elif update:
            await _update_bucket(js, bucket, replicas)
        done.append(f"bucket {bucket.name}: {_verb(exists, update)}")
    for line in done:
        log.debug("topology", extra={"detail": line})
    return done
