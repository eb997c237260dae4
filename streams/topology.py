"""The JetStream topology as data: subjects, streams, durable consumers and KV buckets (contract §5).

This module is the one table of names: every other module names a subject, stream, durable or bucket
through the handles it exports (`NOTIFICATION`, `RUNS`, `RUNNER_CONSUMERS["low"]`, `LEASES`, ...),
never by a literal. Each subject names the schema its payloads carry (`schemas.codec` decodes by it).

Every stream uses Limits retention, so it doubles as a replayable log; work is shared through
durable pull consumers. Each KV bucket is written by one stage (named in `writer`), but
`hub-budget`, which every stage calling the Hub writes (`permissions.BUCKET_WRITERS`).
"""

from __future__ import annotations

import itertools
import typing
from typing import Any

import msgspec

from schemas.events import (
    ActivationRequested,
    ConfigChanged,
    DeadLetter,
    NotificationReceived,
    Priority,
    RunEvent,
    SchedulingRefused,
)

DAY_S = 24 * 3600.0
PRIORITIES: tuple[str, ...] = typing.get_args(Priority)  # ("high", "normal", "low"), highest first
# The run events that end an activation: what the scheduler (the agent is free) and metrics read.
ENDINGS = ("completed", "failed")
# NATS's default max payload. A notification is at most 32 KiB so that an activation request of
# MAX_NOTIFICATIONS_PER_ACTIVATION (20) of them, and the `started` event that repeats it, stay well under
# it; a request is bounded for the same reason (`started` = request + ~1 KiB).
MAX_PAYLOAD_BYTES = 1 << 20


class SubjectSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A subject pattern (NATS wildcards) and what its messages carry: one schema, at most `max_bytes`,
    and names that must equal the subject's tokens (NATS permissions guard subjects, so a payload
    must not act for an agent its subject does not name)."""

    pattern: str
    schema: Any  # the payload struct, or the tagged union of run events
    names: tuple[tuple[str, int], ...]  # (payload field, index of the subject token it must equal)
    tag_token: int | None = None  # for a tagged union: the token its tag must equal
    max_bytes: int = MAX_PAYLOAD_BYTES

    def fill(self, *tokens: str) -> str:
        """The pattern with its `*`s replaced, in order, by `tokens` (subject-safe already, or wildcards)."""
        return self.pattern.replace("*", "{}").format(*tokens)


NOTIFICATION = SubjectSpec(pattern="agents.ingest.notification.*", schema=NotificationReceived,
                           names=(("agent", 3),), max_bytes=32 << 10)
ACTIVATION = SubjectSpec(pattern="agents.sched.activation.*.*", schema=ActivationRequested,
                         names=(("priority", 3), ("agent", 4)), max_bytes=768 << 10)
RUN_EVENT = SubjectSpec(pattern="agents.run.*.*.*", schema=RunEvent,
                        names=(("agent", 2), ("activation_id", 3)), tag_token=4)
CONFIG_AGENT = SubjectSpec(pattern="agents.config.agent.*", schema=ConfigChanged, names=(("name", 3),))
CONFIG_SKILL = SubjectSpec(pattern="agents.config.skill.*", schema=ConfigChanged, names=(("name", 3),))
DEAD_LETTER = SubjectSpec(pattern="agents.dlq.*", schema=DeadLetter, names=(("stage", 2),))
# Refusal events: contract §5 names no scheduler event subject; this one is ours.
DECISION = SubjectSpec(pattern="agents.sched.decision.*", schema=SchedulingRefused, names=(("agent", 3),))
# One schema per subject: every message on a stream's subjects matches exactly one of these.
SUBJECTS = (NOTIFICATION, ACTIVATION, RUN_EVENT, CONFIG_AGENT, CONFIG_SKILL, DEAD_LETTER, DECISION)
ALL_SUBJECTS = "agents.>"


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

    @property
    def stream(self) -> str:
        return kv_stream(self.name)


def kv_stream(bucket: str) -> str:
    """The stream that holds a KV bucket (nats' naming)."""
    return f"KV_{bucket}"


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
_ROOT = SCHED_PART_PREFIX.split(".")[0] + "."  # `agents.`, the first token of every subject
# Short: a killed scheduler's unacknowledged batch goes to the partition's next owner this soon.
SCHEDULER_ACK_WAIT_S = 10.0
# Partition leases of scheduler replicas (bucket `scheduler-owners`): renewed every third of this.
SCHEDULER_OWNER_TTL_S = 8.0


def _partitioned(src: str) -> str:
    """`agents.<rest>` -> `agents.sched.part.{{partition(N,1)}}.<rest>`, the `*`s of `<rest>` kept by the
    transform (`{{wildcard(i)}}`); the agent is the first wildcard of every sourced subject."""
    stars = itertools.count(1)
    rest = [f"{{{{wildcard({next(stars)})}}}}" if t == "*" else t for t in src.split(".")[1:]]
    return ".".join([SCHED_PART_PREFIX, f"{{{{partition({SCHEDULER_PARTITIONS},1)}}}}", *rest])


def original_subject(subject: str) -> str:
    """The inverse of `_partitioned`: `agents.sched.part.<n>.ingest.notification.<a>` ->
    `agents.ingest.notification.<a>` (hot: the scheduler maps every message it reads)."""
    prefix_tokens = SCHED_PART_PREFIX.count(".") + 2  # the prefix plus the partition number
    return _ROOT + subject.split(".", prefix_tokens)[prefix_tokens]


def _source(stream: str, subjects: list[str]) -> SourceSpec:
    return SourceSpec(stream=stream, transforms=[TransformSpec(src=s, dest=_partitioned(s)) for s in subjects])


def scheduler_durable(partition: int) -> str:
    return f"scheduler-p{partition:02d}"


def partition_filter(partition: int) -> str:
    return f"{SCHED_PART_PREFIX}.{partition}.>"


NOTIFICATIONS = StreamSpec(name="NOTIFICATIONS", subjects=[NOTIFICATION.pattern], max_age_s=7 * DAY_S,
                           max_bytes=1 << 30, description="Hub notifications, one message per notification")
ACTIVATIONS = StreamSpec(name="ACTIVATIONS", subjects=[ACTIVATION.pattern], max_age_s=7 * DAY_S,
                         max_bytes=1 << 30, description="Activation requests by priority")
RUNS = StreamSpec(name="RUNS", subjects=[RUN_EVENT.pattern], max_age_s=30 * DAY_S, max_bytes=4 << 30,
                  description="Run events: the full record of every activation")
# CONFIG_AGENT and CONFIG_SKILL.
CONFIG = StreamSpec(name="CONFIG", subjects=["agents.config.*.*"], max_age_s=30 * DAY_S, max_bytes=256 << 20,
                    description="Agent and skill definition changes")
SCHEDULER = StreamSpec(
    name="SCHEDULER", subjects=[], max_age_s=DAY_S, max_bytes=1 << 30,
    sources=[_source(NOTIFICATIONS.name, [NOTIFICATION.pattern]),
             _source(RUNS.name, [RUN_EVENT.fill("*", "*", event) for event in ENDINGS])],
    description="The scheduler's input, partitioned by agent: notifications and ended runs")
DECISIONS = StreamSpec(name="DECISIONS", subjects=[DECISION.pattern], max_age_s=7 * DAY_S,
                       max_bytes=256 << 20, description="Scheduler refusals (budget, ...) with their reasons")
DLQ = StreamSpec(name="DLQ", subjects=[DEAD_LETTER.pattern], max_age_s=30 * DAY_S, max_bytes=1 << 30,
                 description="Dead letters with their reasons")
STREAMS = [NOTIFICATIONS, ACTIVATIONS, RUNS, CONFIG, SCHEDULER, DECISIONS, DLQ]

SCHEDULER_CONSUMERS = [
    ConsumerSpec(stream=SCHEDULER.name, durable=scheduler_durable(partition),
                 filter_subjects=[partition_filter(partition)], ack_wait_s=SCHEDULER_ACK_WAIT_S,
                 max_deliver=MAX_DELIVERIES + 1, max_ack_pending=10_000,
                 description=f"scheduler partition {partition}: read by the replica holding its lease")
    for partition in range(SCHEDULER_PARTITIONS)
]
# By priority: `RUNNER_CONSUMERS["low"]` is durable `runner-low`.
RUNNER_CONSUMERS = {
    priority: ConsumerSpec(stream=ACTIVATIONS.name, durable=f"runner-{priority}",
                           filter_subjects=[ACTIVATION.fill(priority, "*")],
                           ack_wait_s=RUNNER_ACK_WAIT_S, max_deliver=MAX_DELIVERIES + 1, max_ack_pending=1_000,
                           description=f"{priority}-priority activations, shared by every runner pod")
    for priority in PRIORITIES
}
METRICS_CONSUMER = ConsumerSpec(stream=RUNS.name, durable="metrics",
                                filter_subjects=[RUN_EVENT.fill("*", "*", event) for event in ENDINGS],
                                ack_wait_s=30.0, max_deliver=MAX_DELIVERIES + 1, max_ack_pending=10_000)
# The trace exporter (services/metrics/traces.py): read only when OTEL_EXPORTER_OTLP_ENDPOINT is set.
TRACES_CONSUMER = ConsumerSpec(stream=RUNS.name, durable="metrics-traces",
                               filter_subjects=[RUN_EVENT.fill("*", "*", event) for event in ENDINGS],
                               ack_wait_s=30.0, max_deliver=MAX_DELIVERIES + 1, max_ack_pending=10_000)
CONSUMERS = [*SCHEDULER_CONSUMERS, *RUNNER_CONSUMERS.values(), METRICS_CONSUMER, TRACES_CONSUMER]

AGENT_STATE = BucketSpec(name="agent-state", writer="scheduler",
                         description="Per agent: queued/in-flight activation, pending notifications, counts")
SCHEDULER_OWNERS = BucketSpec(name="scheduler-owners", writer="scheduler", ttl_s=SCHEDULER_OWNER_TTL_S,
                              description="Scheduler replicas (member.<id>) and the partition each holds (part.<n>)")
LEASES = BucketSpec(name="leases", writer="runner", ttl_s=LEASE_TTL_S,
                    description="One key per running agent, renewed while the activation runs")
LIMITS = BucketSpec(name="limits", writer="runner", ttl_s=2 * DAY_S,
                    description="Per-agent daily counters and per-thread reply counts")
REPLIES = BucketSpec(name="replies", writer="runner", ttl_s=30 * DAY_S,
                     description="A marker per posted reply, keyed by activation and notification")
CONFIGS = BucketSpec(name="configs", writer="configsync",
                     description="Parsed agent and skill definitions by content hash, plus name pointers")
# Feed-derived ingestion (Hubs without notifications): which posts and comments were turned into
# notifications, the threads each agent watches, each agent's Hub name. Idle threads expire.
INGEST_FEED = BucketSpec(name="ingest-feed", writer="ingest", ttl_s=30 * DAY_S,
                         description="Feed ingestion: thread.<post> (what was read), watch.<agent>, name.<agent>")
# Written by the operator (`botburrow agent pause|resume`, `botburrow cancel`), read by one stage each.
PAUSED = BucketSpec(name="paused", writer="operator",
                    description="One key per paused agent: the scheduler activates none of them")
CANCELS = BucketSpec(name="cancels", writer="operator", ttl_s=ACTIVATIONS.max_age_s,
                     description="One key per cancelled activation: the runner stops it, or refuses it at start")
# The local consumption ledger (services/metrics/ledger.py): kept two budget months.
BUDGET_LEDGER = BucketSpec(name="budget-ledger", writer="metrics", ttl_s=62 * DAY_S,
                           description="Spend per budget period and tool type, its budget health, the unreported mark")
# One request budget per Hub (botburrow/hub/budget.py): written by every stage that calls the Hub
# (permissions.BUCKET_WRITERS), not only its `writer`. An idle scope's record expires.
HUB_BUDGET = BucketSpec(name="hub-budget", writer="ingest", ttl_s=DAY_S,
                        description="Per Hub scope (its address, or an agent key's hash): the grants of the last "
                                    "minute, Retry-After, the limit learnt")
BUCKETS = [AGENT_STATE, SCHEDULER_OWNERS, LEASES, LIMITS, REPLIES, CONFIGS, HUB_BUDGET, INGEST_FEED, PAUSED, CANCELS,
           BUDGET_LEDGER]


def stream(name: str) -> StreamSpec:
    return next(spec for spec in STREAMS if spec.name == name)


def consumer(durable: str) -> ConsumerSpec:
    return next(spec for spec in CONSUMERS if spec.durable == durable)
