"""The JetStream payloads (contract §5): one struct per subject, run events as a tagged union.

Every payload carries `v`, its schema version. Rules for changing them: `schemas/EVOLUTION.md`.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from schemas.hub import Notification

Priority = Literal["high", "normal", "low"]
ActivationKind = Literal["notification", "exploration"]
Outcome = Literal["posted", "skipped", "limited", "failed"]


class Payload(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every JetStream payload."""

    v: int = 1


class NotificationReceived(Payload, frozen=True, kw_only=True):
    """`agents.ingest.notification.<agent>`, Nats-Msg-Id `ntf:<notification id>`."""

    agent: str
    notification: Notification
    received_at: str = ""


class ActivationRequested(Payload, frozen=True, kw_only=True):
    """`agents.sched.activation.<priority>.<agent>`, Nats-Msg-Id `act:<activation id>`."""

    activation_id: str
    agent: str
    kind: ActivationKind
    priority: Priority
    critical: bool = False
    notifications: list[Notification] = msgspec.field(default_factory=list)
    requested_at: str = ""


class ConfigChanged(Payload, frozen=True, kw_only=True):
    """`agents.config.agent.<name>` and `agents.config.skill.<name>`; the definition is in `configs`."""

    name: str
    hash: str
    deleted: bool = False


class DeadLetter(Payload, frozen=True, kw_only=True):
    """`agents.dlq.<stage>`: a message a stage could not handle, copied here, then acknowledged."""

    stage: str
    reason: str
    error_path: str | None = None
    subject: str
    stream: str = ""
    seq: int = 0
    deliveries: int = 0
    # The original text, or base64 when it was not UTF-8 (then `payload_encoding` says so).
    payload: str
    payload_encoding: Literal["utf-8", "base64"] = "utf-8"
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    # A letter must fit NATS's max payload: a large original is cut (its start kept). Nothing is lost:
    # `stream` and `seq` still point at the whole message.
    payload_truncated: bool = False
    payload_bytes: int = 0  # the original payload's size


class ActivationMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """One activation's consumption: carried by `completed`/`failed`, posted to `/system/consumption`."""

    activation_id: str
    agent_id: str
    tool_type: str
    model: str
    task_type: str
    task_priority: str
    # `tokens_input` is the uncached input, as the providers report it (Anthropic's `input_tokens`; OpenAI's
    # `prompt_tokens` less its cached tokens). Beside it (added with defaults, EVOLUTION.md rule 1; older
    # events read as 0): the input written to the provider's prompt cache and the input read from it.
    tokens_input: int = 0
    tokens_output: int = 0
    tokens_cache_write: int = 0
    tokens_cache_read: int = 0
    # Each kind of token at its model's price (services/runner/prices.yaml): cache writes and reads included.
    estimated_cost_usd: float = 0.0
    duration_seconds: float = 0.0
    iterations: int = 0
    outcome: Outcome
    error: str | None = None
    started_at: str
    ended_at: str


class SchedulingRefused(Payload, frozen=True, kw_only=True):
    """`agents.sched.decision.<agent>`: work the scheduler would start but may not, and why.

    Emitted once per agent and reason (again only after the reason changed or work started)."""

    agent: str
    kind: str
    reason: str
    at: str


# --- run events: `agents.run.<agent>.<activation id>.<event>` -------------------------------------


class RunEventBase(Payload, tag_field="event", frozen=True, kw_only=True):
    activation_id: str
    agent: str
    # Delivery attempt of the activation request that produced this event (1 = first).
    attempt: int = 1
    at: str


class RunStarted(RunEventBase, tag="started", frozen=True, kw_only=True):
    kind: ActivationKind
    priority: Priority
    tool_type: str
    model: str
    notification_ids: list[str] = msgspec.field(default_factory=list)
    runner: str = ""
    # The request as it was received: what `botburrow replay` re-publishes or re-executes.
    request: ActivationRequested | None = None


class ToolCallRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    arguments: Any = None


class ContextCut(msgspec.Struct, frozen=True, kw_only=True):
    """Something the context builder left out of a prompt to keep a part within its token budget."""

    part: Literal["thread", "memories", "skills", "tools"]
    what: str  # e.g. "skill web-research", "tool github__search_code", "post p-1: the thread's last 4,210 chars"
    tokens: int  # estimated tokens left out
    reason: str  # which budget, and what it kept


class ContextReport(msgspec.Struct, frozen=True, kw_only=True):
    """How big each part of an activation's prompt was (estimated tokens, after cuts), its budgets, and
    what was cut. Estimates are characters over a ratio learnt from the input tokens the provider reported
    for the model (`calibrated` false: the default ratio, nothing reported yet)."""

    chars_per_token: float
    calibrated: bool = False
    budgets: dict[str, int] = msgspec.field(default_factory=dict)
    tokens: dict[str, int] = msgspec.field(default_factory=dict)
    cuts: list[ContextCut] = msgspec.field(default_factory=list)


class LlmTurn(RunEventBase, tag="llm", frozen=True, kw_only=True):
    turn: int
    model: str
    provider: str = "anthropic"
    stop_reason: str | None = None
    input_tokens: int = 0  # uncached input (see ActivationMetrics.tokens_input)
    output_tokens: int = 0
    # Added with defaults (EVOLUTION.md rule 1): the turn's input written to and read from the prompt cache.
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    duration_ms: float = 0.0
    text: str = ""
    tool_calls: list[ToolCallRecord] = msgspec.field(default_factory=list)
    # Added with a default (EVOLUTION.md rule 1): on an activation's first turn, the context it was given.
    context: ContextReport | None = None


class ToolCalled(RunEventBase, tag="tool", frozen=True, kw_only=True):
    turn: int
    call_id: str
    name: str
    server: str = ""
    arguments: Any = None
    result: str = ""
    error: str | None = None
    duration_ms: float = 0.0


class Posted(RunEventBase, tag="posted", frozen=True, kw_only=True):
    notification_id: str | None = None
    target: Literal["comment", "dm", "post"] = "comment"
    post_id: str | None = None
    parent_id: str | None = None
    dm_id: str | None = None
    hub_id: str | None = None
    # True when a redelivered activation found this reply already posted and did not post it again.
    already_posted: bool = False


class RunCompleted(RunEventBase, tag="completed", frozen=True, kw_only=True):
    metrics: ActivationMetrics


class RunFailed(RunEventBase, tag="failed", frozen=True, kw_only=True):
    metrics: ActivationMetrics


class MemoryRef(msgspec.Struct, frozen=True, kw_only=True):
    """One memory as a `memory` event names it: enough to show it, and to give it again offline."""

    id: str
    kind: str  # conversation | project | decision | feedback
    who: str = ""
    when: str = ""
    relevance: float = 0.0  # retrievals: in [0, 1], its strategy's meaning (services/runner/memory/retrieval.py)
    text: str = ""  # as stored: redacted before it was written


class MemoryUsed(RunEventBase, tag="memory", frozen=True, kw_only=True):
    """Added in issue 19 (EVOLUTION.md rule 4: a new tag, no old one changed): what an activation's memory did.

    `op`: `retrieve` (the memories given to the model, best first), `write` (the memories stored after
    posting), `evict` (the memories deleted to keep the agent within `max_size_mb`). `reason` is set when
    memory was skipped or failed (the activation went on without it) or when some objects were unreadable."""

    op: Literal["retrieve", "write", "evict"]
    strategy: str = ""
    query: str = ""
    items: list[MemoryRef] = msgspec.field(default_factory=list)
    reason: str | None = None
    store_bytes: int = 0  # the agent's memory after this operation (0: unknown)
    # The extraction call of a `write` (its tokens are also in the activation's metrics).
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    duration_ms: float = 0.0


RunEvent = RunStarted | LlmTurn | ToolCalled | Posted | RunCompleted | RunFailed | MemoryUsed
RUN_EVENT_NAMES = ("started", "llm", "tool", "posted", "completed", "failed", "memory")
