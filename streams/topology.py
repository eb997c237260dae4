"""The JetStream topology as data: streams, durable consumers and KV buckets (contract §5).

Every stream uses Limits retention, so it doubles as a replayable log; work is shared through
durable pull consumers. Each KV bucket is written by exactly one stage (named in `writer`).
"""

from __future__ import annotations

import msgspec

DAY_S = 24 * 3600.0


class TransformSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A subject transform applied to the messages a stream sources (`src` filter -> `dest`)."""

    src: str
    dest: str


class SourceSpec(msgspec.Struct, frozen=True, kw_only=True):
    stream: str
    transforms: list[TransformSpec]


class StreamSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    subjects: list[str]
    max_age_s: float
    max_bytes: int = -1
    duplicate_window_s: float = 120.0
    description: str = ""
    # A stream built from other streams (no subjects of its own), e.g. SCHEDULER.
    sources: list[SourceSpec] = msgspec.field(default_factory=list)


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

# The scheduler partitions its agents: SCHEDULER sources the notifications and the `completed`/`failed`
# run events with a subject transform that inserts `partition(N, agent)` (FNV-1a 32 of the agent token,
# mod N), so one durable per partition gets every event of its agents in stream order, whoever owns it.
SCHEDULER_PARTITIONS = 16
SCHED_PART_PREFIX = "agents.sched.part"
# Short: a killed scheduler's unacknowledged batch goes to the partition's next owner this soon.
SCHEDULER_ACK_WAIT_S = 10.0
# Partition leases of scheduler replicas (bucket `scheduler-owners`): renewed every third of this.
SCHEDULER_OWNER_TTL_S = 8.0


def _part(wildcard: int) -> str:
    return f"{SCHED_PART_PREFIX}.{{{{partition({SCHEDULER_PARTITIONS},{wildcard})}}}}"


SCHEDULER_SOURCES = [
    SourceSpec(stream="NOTIFICATIONS", transforms=[
        TransformSpec(src="agents.ingest.notification.*", dest=f"{_part(1)}.ingest.notification.{{{{wildcard(1)}}}}"),
    ]),
    SourceSpec(stream="RUNS", transforms=[
        TransformSpec(src=f"agents.run.*.*.{event}",
                      dest=f"{_part(1)}.run.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{event}")
        for event in ("completed", "failed")
    ]),
]


def scheduler_durable(partition: int) -> str:
    return f"scheduler-p{partition:02d}"


def partition_filter(partition: int) -> str:
    return f"{SCHED_PART_PREFIX}.{partition}.>"

STREAMS = [
    StreamSpec(name="NOTIFICATIONS", subjects=["agents.ingest.notification.*"], max_age_s=7 * DAY_S,
               max_bytes=1 << 30, description="Hub notifications, one message per notification"),
    StreamSpec(name="ACTIVATIONS", subjects=["agents.sched.activation.*.*"], max_age_s=7 * DAY_S,
               max_bytes=1 << 30, description="Activation requests by priority"),
    StreamSpec(name="RUNS", subjects=["agents.run.*.*.*"], max_age_s=30 * DAY_S, max_bytes=4 << 30,
               description="Run events: the full record of every activation"),
    StreamSpec(name="CONFIG", subjects=["agents.config.*.*"], max_age_s=30 * DAY_S, max_bytes=256 << 20,
               description="Agent and skill definition changes"),
    StreamSpec(name="SCHEDULER", subjects=[], max_age_s=DAY_S, max_bytes=1 << 30, sources=SCHEDULER_SOURCES,
               description="The scheduler's input, partitioned by agent: notifications and ended runs"),
    StreamSpec(name="DECISIONS", subjects=["agents.sched.decision.*"], max_age_s=7 * DAY_S,
               max_bytes=256 << 20, description="Scheduler refusals (budget, ...) with their reasons"),
    StreamSpec(name="DLQ", subjects=["agents.dlq.*"], max_age_s=30 * DAY_S, max_bytes=1 << 30,
               description="Dead letters with their reasons"),
]

CONSUMERS = [
    *[
        ConsumerSpec(stream="SCHEDULER", durable=scheduler_durable(partition),
                     filter_subjects=[partition_filter(partition)], ack_wait_s=SCHEDULER_ACK_WAIT_S,
                     max_deliver=MAX_DELIVERIES + 1, max_ack_pending=10_000,
                     description=f"scheduler partition {partition}: read by the replica holding its lease")
        for partition in range(SCHEDULER_PARTITIONS)
    ],
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
]

BUCKETS = [
    BucketSpec(name="agent-state", writer="scheduler",
               description="Per agent: queued/in-flight activation, pending notifications, counts"),
    BucketSpec(name="scheduler-owners", writer="scheduler", ttl_s=SCHEDULER_OWNER_TTL_S,
               description="Scheduler replicas (member.<id>) and the partition each holds (part.<n>)"),
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
