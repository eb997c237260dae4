"""The JetStream topology as data: streams, durable consumers and KV buckets (SPEC §5).

Every stream uses Limits retention, so it doubles as a replayable log; work is shared through
durable pull consumers. Each KV bucket is written by exactly one stage (named in `writer`).
"""

from __future__ import annotations

import msgspec

DAY_S = 24 * 3600.0


class StreamSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    subjects: list[str]
    max_age_s: float
    max_bytes: int = -1
    duplicate_window_s: float = 120.0
    description: str = ""


class ConsumerSpec(msgspec.Struct, frozen=True, kw_only=True):
    stream: str
    durable: str
    filter_subjects: list[str]
    ack_wait_s: float
    max_deliver: int
    max_ack_pending: int
    description: str = ""


class BucketSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    writer: str
    ttl_s: float = 0.0
    history: int = 1
    description: str = ""


# Runner consumers: an activation holds its message for as long as it runs, heartbeating with
# `in_progress()` every ack_wait/3; the lease TTL matches ack_wait so a crashed runner's lease frees
# about when its message is redelivered.
RUNNER_ACK_WAIT_S = 60.0
LEASE_TTL_S = RUNNER_ACK_WAIT_S
# Application-side delivery cap: past it, a message is dead-lettered (server max_deliver is one above).
MAX_DELIVERIES = 5

STREAMS = [
    StreamSpec(name="NOTIFICATIONS", subjects=["agents.ingest.notification.*"], max_age_s=7 * DAY_S,
               max_bytes=1 << 30, description="Hub notifications, one message per notification"),
    StreamSpec(name="ACTIVATIONS", subjects=["agents.sched.activation.*.*"], max_age_s=7 * DAY_S,
               max_bytes=1 << 30, description="Activation requests by priority"),
    StreamSpec(name="RUNS", subjects=["agents.run.*.*.*"], max_age_s=30 * DAY_S, max_bytes=4 << 30,
               description="Run events: the full record of every activation"),
    StreamSpec(name="CONFIG", subjects=["agents.config.*.*"], max_age_s=30 * DAY_S, max_bytes=256 << 20,
               description="Agent and skill definition changes"),
    StreamSpec(name="DLQ", subjects=["agents.dlq.*"], max_age_s=30 * DAY_S, max_bytes=1 << 30,
               description="Dead letters with their reasons"),
]

CONSUMERS = [
    ConsumerSpec(stream="NOTIFICATIONS", durable="scheduler",
                 filter_subjects=["agents.ingest.notification.*"], ack_wait_s=30.0,
                 max_deliver=MAX_DELIVERIES + 1, max_ack_pending=10_000),
    *[
        ConsumerSpec(stream="ACTIVATIONS", durable=f"runner-{priority}",
                     filter_subjects=[f"agents.sched.activation.{priority}.*"],
                     ack_wait_s=RUNNER_ACK_WAIT_S, max_deliver=MAX_DELIVERIES + 1, max_ack_pending=1_000,
                     description=f"{priority}-priority activations, shared by every runner pod")
        for priority in ("high", "normal", "low")
    ],
    ConsumerSpec(stream="RUNS", durable="metrics",
                 filter_subjects=["agents.run.*.*.completed", "agents.run.*.*.failed"], ack_wait_s=30.0,
                 max_deliver=MAX_DELIVERIES + 1, max_ack_pending=10_000),
    ConsumerSpec(stream="RUNS", durable="scheduler-runs",
                 filter_subjects=["agents.run.*.*.completed", "agents.run.*.*.failed"], ack_wait_s=30.0,
                 max_deliver=MAX_DELIVERIES + 1, max_ack_pending=10_000),
]

BUCKETS = [
    BucketSpec(name="agent-state", writer="scheduler",
               description="Per agent: queued/in-flight activation, pending notifications, counts"),
    BucketSpec(name="leases", writer="runner", ttl_s=LEASE_TTL_S,
               description="One key per running agent, renewed while the activation runs"),
    BucketSpec(name="limits", writer="runner", ttl_s=2 * DAY_S,
               description="Per-agent daily counters and per-thread reply counts"),
    BucketSpec(name="replies", writer="runner", ttl_s=30 * DAY_S,
               description="A marker per posted reply, keyed by activation and notification"),
    BucketSpec(name="configs", writer="configsync",
               description="Parsed agent and skill definitions by content hash, plus name pointers"),
]


def stream(name: str) -> StreamSpec:
    return next(spec for spec in STREAMS if spec.name == name)


def consumer(durable: str) -> ConsumerSpec:
    return next(spec for spec in CONSUMERS if spec.durable == durable)
