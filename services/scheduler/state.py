"""The scheduler's decisions, without any I/O: events in, activation requests and changed agents out.

One `SchedulerState` owns the agents it is given (all of them today; one partition's share once
the scheduler partitions). The shell feeds it a batch of events inside a transaction:

    state.begin()
    state.on_notification(...) / state.on_run_ended(...)   # any number
    changes = state.prepare()      # activations to publish, agents to persist, tallies
    ... publish, persist ...
    state.commit()                 # or state.rollback() if any of that failed

`prepare()` schedules each touched agent that is idle and has pending notifications, so the
notifications of one batch for one agent become one activation. Rolling back restores every agent
the batch touched, so a batch that is redelivered after a failure is decided again from the same
state and yields the same (deterministic) activation ids.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from botburrow.schemas.agent import AgentConfig
from botburrow.schemas.events import ActivationRequested, Priority
from botburrow.schemas.hub import Notification

# SPEC §4: the priority of each notification type that can lead to an activation.
PRIORITY_OF_TYPE: dict[str, Priority] = {
    "mention": "high",
    "dm": "high",
    "reply": "normal",
    "comment": "normal",
    "thread_update": "normal",
}
PRIORITY_RANK: dict[str, int] = {"high": 0, "normal": 1, "low": 2}
# A flood of notifications for one agent is worked off in activations of bounded size.
MAX_NOTIFICATIONS_PER_ACTIVATION = 20
# Ids of notifications already handled, kept per agent so a late redelivery is not activated again.
RECENT_IDS_KEPT = 200

Verdict = Literal["queued", "merged", "duplicate", "skipped"]


class Responds(msgspec.Struct, frozen=True, kw_only=True):
    """What the scheduler needs from an agent's definition: which notification types it answers."""

    mentions: bool = True
    replies: bool = True
    dms: bool = True
    # SPEC §4: thread updates are never answered by default; no config flag turns them on yet.
    thread_updates: bool = False

    @classmethod
    def of(cls, config: AgentConfig) -> Responds:
        behavior = config.behavior
        return cls(mentions=behavior.respond_to_mentions, replies=behavior.respond_to_replies,
                   dms=behavior.respond_to_dms)

    def answers(self, notification_type: str) -> bool:
        return {
            "mention": self.mentions,
            "dm": self.dms,
            "reply": self.replies,
            "comment": self.replies,
            "thread_update": self.thread_updates,
        }.get(notification_type, False)


class InFlight(msgspec.Struct, frozen=True, kw_only=True):
    """The one activation of an agent that is queued or running."""

    activation_id: str
    priority: Priority
    notification_ids: tuple[str, ...]
    requested_at: str


class AgentState(msgspec.Struct, frozen=True, kw_only=True):
    """One agent's scheduling state: the value of its key in the `agent-state` bucket."""

    v: int = 1
    agent: str
    in_flight: InFlight | None = None
    # Notifications waiting for the next activation, in arrival order.
    pending: tuple[Notification, ...] = ()
    recent_ids: tuple[str, ...] = ()
    last_requested_at: str | None = None
    last_activated_at: str | None = None
    last_activation_id: str | None = None
    last_outcome: str | None = None
    notifications_received: int = 0
    notifications_skipped: int = 0
    notifications_merged: int = 0
    activations_requested: int = 0
    activations_completed: int = 0
    activations_failed: int = 0

    def knows(self, notification_id: str) -> bool:
        if self.in_flight is not None and notification_id in self.in_flight.notification_ids:
            return True
        return notification_id in self.recent_ids or any(n.id == notification_id for n in self.pending)


@dataclass
class Changes:
    """What one batch decided: to publish, to persist, and to count."""

    requests: list[ActivationRequested] = field(default_factory=list)
    agents: dict[str, AgentState] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)
    merged: int = 0
    duplicates: int = 0


def activation_id(agent: str, notification_ids: Iterable[str]) -> str:
    """Deterministic: the same agent and notifications always give the same id (JetStream dedup)."""
    digest = hashlib.sha256("\n".join([agent, *sorted(notification_ids)]).encode()).hexdigest()
    return digest[:24]


def skip_reason(agent: str, notification: Notification, responds: Responds) -> str | None:
    """Why a notification leads to no activation (a metrics label), or None if it is answered."""
    if notification.type not in PRIORITY_OF_TYPE:
        return "unsupported_type"
    if notification.from_.name == agent:
        return "self"
    if not responds.answers(notification.type):
        return "disabled"
    return None


def _remember(recent: tuple[str, ...], ids: Iterable[str]) -> tuple[str, ...]:
    return (*recent, *ids)[-RECENT_IDS_KEPT:]


def _pick(pending: tuple[Notification, ...]) -> tuple[tuple[Notification, ...], tuple[Notification, ...]]:
    """Split pending into the next activation's notifications (most urgent first) and the rest."""
    ordered = sorted(pending, key=lambda n: PRIORITY_RANK[PRIORITY_OF_TYPE[n.type]])
    chosen_ids = {n.id for n in ordered[:MAX_NOTIFICATIONS_PER_ACTIVATION]}
    chosen = tuple(n for n in pending if n.id in chosen_ids)
    rest = tuple(n for n in pending if n.id not in chosen_ids)
    return chosen, rest


class SchedulerState:
    def __init__(self, agents: Mapping[str, AgentState] | None = None) -> None:
        self._agents: dict[str, AgentState] = {}
        self._before: dict[str, AgentState | None] = {}
        self._changes = Changes()
        # Kept incrementally so that reading it costs nothing at 100k agents.
        self.in_flight_count = 0
        self.load((agents or {}).values())

    # --- reading ------------------------------------------------------------------------------

    def get(self, agent: str) -> AgentState | None:
        return self._agents.get(agent)

    def __len__(self) -> int:
        return len(self._agents)

    def load(self, states: Iterable[AgentState]) -> None:
        """Take over persisted states (at start-up, or when a partition is assigned)."""
        for state in states:
            self._store(state.agent, state)

    def _store(self, agent: str, state: AgentState | None) -> None:
        old = self._agents.get(agent)
        self.in_flight_count += int(state is not None and state.in_flight is not None)
        self.in_flight_count -= int(old is not None and old.in_flight is not None)
        if state is None:
            self._agents.pop(agent, None)
        else:
            self._agents[agent] = state

    # --- a transaction ------------------------------------------------------------------------

    def begin(self) -> None:
        if self._before:
            raise RuntimeError("a batch is already open: commit or roll it back first")
        self._changes = Changes()

    def _set(self, state: AgentState) -> None:
        if state.agent not in self._before:
            self._before[state.agent] = self._agents.get(state.agent)
        self._store(state.agent, state)

    def _current(self, agent: str) -> AgentState:
        return self._agents.get(agent) or AgentState(agent=agent)

    def on_notification(self, agent: str, notification: Notification, responds: Responds) -> Verdict:
        state = self._current(agent)
        if state.knows(notification.id):
            self._changes.duplicates += 1
            return "duplicate"
        state = msgspec.structs.replace(state, notifications_received=state.notifications_received + 1)
        reason = skip_reason(agent, notification, responds)
        if reason is not None:
            self._changes.skipped[reason] += 1
            self._set(msgspec.structs.replace(state, notifications_skipped=state.notifications_skipped + 1,
                                              recent_ids=_remember(state.recent_ids, [notification.id])))
            return "skipped"
        merged = state.in_flight is not None
        self._set(msgspec.structs.replace(
            state,
            pending=(*state.pending, notification),
            notifications_merged=state.notifications_merged + int(merged),
        ))
        self._changes.merged += int(merged)
        return "merged" if merged else "queued"

    def on_run_ended(self, agent: str, activation: str, *, failed: bool, ended_at: str, outcome: str) -> bool:
        """A `completed`/`failed` event; True when it ended the agent's in-flight activation."""
        state = self._current(agent)
        if state.last_activation_id == activation:
            return False  # a redelivered event: already counted
        ends_in_flight = state.in_flight is not None and state.in_flight.activation_id == activation
        ended_ids = state.in_flight.notification_ids if ends_in_flight and state.in_flight else ()
        self._set(msgspec.structs.replace(
            state,
            in_flight=None if ends_in_flight else state.in_flight,
            recent_ids=_remember(state.recent_ids, ended_ids),
            last_activated_at=ended_at or state.last_activated_at,
            last_activation_id=activation,
            last_outcome=outcome,
            activations_completed=state.activations_completed + int(not failed),
            activations_failed=state.activations_failed + int(failed),
        ))
        return ends_in_flight

    def prepare(self, now: str) -> Changes:
        """Schedule every touched idle agent with pending work; return what the batch changed."""
        for agent in list(self._before):
            state = self._agents[agent]
            if state.in_flight is None and state.pending:
                self._set(self._start(state, now))
        self._changes.agents = {agent: self._agents[agent] for agent in self._before}
        return self._changes

    def _start(self, state: AgentState, now: str) -> AgentState:
        chosen, rest = _pick(state.pending)
        ids = tuple(n.id for n in chosen)
        priority = min((PRIORITY_OF_TYPE[n.type] for n in chosen), key=PRIORITY_RANK.__getitem__)
        request = ActivationRequested(activation_id=activation_id(state.agent, ids), agent=state.agent,
                                      kind="notification", priority=priority, notifications=list(chosen),
                                      requested_at=now)
        self._changes.requests.append(request)
        return msgspec.structs.replace(
            state,
            in_flight=InFlight(activation_id=request.activation_id, priority=priority, notification_ids=ids,
                               requested_at=now),
            pending=rest,
            last_requested_at=now,
            activations_requested=state.activations_requested + 1,
        )

    def commit(self) -> None:
        self._before.clear()
        self._changes = Changes()

    def rollback(self) -> None:
        for agent, before in self._before.items():
            self._store(agent, before)
        self.commit()
