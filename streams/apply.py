"""Create (and with `update=True`, reconcile) every stream, consumer and bucket of the topology.

Stages call `ensure(js)` at start-up: it creates what is missing and leaves existing objects alone.
Only `botburrow streams apply` passes `update=True` and changes existing ones (SPEC §5).
"""

from __future__ import annotations

import logging

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
)
from nats.js.errors import BucketNotFoundError, NotFoundError

from botburrow.streams.topology import BUCKETS, CONSUMERS, STREAMS, BucketSpec, ConsumerSpec, StreamSpec

log = logging.getLogger(__name__)


def stream_config(spec: StreamSpec, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        description=spec.description or None,
        subjects=spec.subjects,
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


async def ensure(js: JetStreamContext, *, update: bool = False, replicas: int = 1) -> list[str]:
    """Make the topology exist; returns a line per object saying what was done (for progress output)."""
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
    for spec in CONSUMERS:
        exists = True
        try:
            await js.consumer_info(spec.stream, spec.durable)
        except NotFoundError:
            exists = False
        if not exists or update:
            # add_consumer with an existing durable name updates its mutable settings.
            await js.add_consumer(spec.stream, consumer_config(spec))
        done.append(f"consumer {spec.stream}/{spec.durable}: {_verb(exists, update)}")
    for spec in BUCKETS:
        try:
            await js.key_value(spec.name)
            exists = True
        except BucketNotFoundError:
            exists = False
        if not exists or update:
            # create_key_value on an existing bucket with the same name updates it.
            await js.create_key_value(bucket_config(spec, replicas))
        done.append(f"bucket {spec.name}: {_verb(exists, update)}")
    for line in done:
        log.debug("topology", extra={"detail": line})
    return done
