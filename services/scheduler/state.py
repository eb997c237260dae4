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
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from botburrow.settings import SchedulerSettings
from schemas.agent import AgentConfig, Behavior
from schemas.events import ActivationRequested, Priority, SchedulingRefused
from schemas.hub import Notification
from services.scheduler.due import DueQueue, ExploreRule, epoch_s

# contract §4: the priority of each notification type that can lead to an activation.
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
PAUSED_REASON = "paused"
# An agent refused by the budget gate is looked at again this much later.
REFUSED_RECHECK_S = 60.0

# gate(agent, kind, critical) -> the reason this work may not start now, or None.
Gate = Callable[[str, str, bool], "str | None"]


def _open_gate(agent: str, kind: str, critical: bool) -> str | None:
    return None


class Responds(msgspec.Struct, frozen=True, kw_only=True):
    """What the scheduler needs from an agent's definition: which notification types it answers, by the
    one rule beside the config schema (`Behavior.answers`, which the runner applies too)."""

    behavior: Behavior = msgspec.field(default_factory=Behavior)

    @classmethod
    def of(cls, config: AgentConfig) -> Responds:
        return cls(behavior=config.behavior)

    def answers(self, notification_type: str) -> bool:
        return self.behavior.answers(notification_type)


# Never tracked by the cyclic GC (`gc=False`): immutable data that cannot form a cycle, held by the
# hundred thousand, and each full collection would walk them all (68 ms at 100k agents, a latency tail).
class InFlight(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The one activation of an agent that is queued or running."""

    activation_id: str
    priority: Priority
    notification_ids: tuple[str, ...]
    requested_at: str
    kind: str = "notification"


class AgentState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
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
    explorations_requested: int = 0
    activations_lost: int = 0

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
    refusals: list[SchedulingRefused] = field(default_factory=list)
    lost: int = 0


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
    def __init__(self, agents: Mapping[str, AgentState] | None = None, *,
                 stuck_after_s: float = SchedulerSettings.scheduler_stuck_after_seconds) -> None:
        self._agents: dict[str, AgentState] = {}
        self._before: dict[str, AgentState | None] = {}
        self._changes = Changes()
        self.stuck_after_s = stuck_after_s
        self.gate: Gate = _open_gate
        # Agents an operator paused (`botburrow agent pause`): none of their work starts, reason `paused`.
        self.paused: Container[str] = frozenset()
        # Exploration: the rules of agents with discovery on, and when each is next due.
        self._rules: dict[str, ExploreRule] = {}
        self._explore_due = DueQueue()
        # In-flight activations by the time they count as possibly lost.
        self._stuck_due = DueQueue()
        # Idle agents with pending notifications that the gate refused: looked at again on a tick.
        self._blocked: set[str] = set()
        self._refused: dict[str, str] = {}
        self._popped: list[tuple[DueQueue, tuple[float, str, str]]] = []
        # Kept incrementally so that reading it costs nothing at 100k agents.
        self.in_flight_count = 0
        self.load((agents or {}).values())

    # --- reading ------------------------------------------------------------------------------

    def get(self, agent: str) -> AgentState | None:
        return self._agents.get(agent)

    def __len__(self) -> int:
        return len(self._agents)

    @property
    def blocked_count(self) -> int:
        return len(self._blocked)

    def load(self, states: Iterable[AgentState]) -> None:
        """Take over persisted states (at start-up, or when a partition is assigned)."""
        for state in states:
            self._store(state.agent, state)
            if state.in_flight is not None:
                self._stuck_due.push(_s(state.in_flight.requested_at) + self.stuck_after_s, state.agent,
                                     state.in_flight.activation_id)
            elif state.pending:
                self._blocked.add(state.agent)

    def configure(self, agent: str, rule: ExploreRule | None) -> None:
        """An agent's exploration rule (None: no exploration); a new or changed one is due per its state."""
        if rule is None:
            self._rules.pop(agent, None)
            return
        if self._rules.get(agent) == rule:
            return
        self._rules[agent] = rule
        self._explore_due.push(self._explore_due_s(agent, rule), agent)

    def _explore_due_s(self, agent: str, rule: ExploreRule) -> float:
        state = self._agents.get(agent)
        last = epoch_s(state.last_activated_at) if state else None
        return 0.0 if last is None else last + rule.gap_s  # never run: before everyone

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
        self._popped = []

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
        lost = outcome == "lost"
        self._set(msgspec.structs.replace(
            state,
            in_flight=None if ends_in_flight else state.in_flight,
            recent_ids=_remember(state.recent_ids, ended_ids),
            last_activated_at=ended_at or state.last_activated_at,
            last_activation_id=activation,
            last_outcome=outcome,
            activations_completed=state.activations_completed + int(not failed),
            activations_failed=state.activations_failed + int(failed and not lost),
            activations_lost=state.activations_lost + int(lost),
        ))
        self._changes.lost += int(lost)
        rule = self._rules.get(agent)
        if rule is not None:  # staleness advances: the next exploration is due a gap after this run
            self._explore_due.push((epoch_s(ended_at) or 0.0) + rule.gap_s, agent)
        return ends_in_flight

    def retry_blocked(self, *, explorations: bool = False) -> None:
        """Have `prepare` look again at every agent the gate refused (cost: the refused agents only);
        with `explorations` (the gate changed), refused explorations are due again at once too."""
        if explorations:
            for agent, key in self._refused.items():
                if key.startswith("exploration:"):
                    self._explore_due.push(0.0, agent)
        for agent in list(self._blocked):
            state = self._agents.get(agent)
            if state is None or state.in_flight is not None or not state.pending:
                self._blocked.discard(agent)
            elif agent not in self.paused:  # a paused agent waits for its resume, not rewritten every tick
                self._set(state)

    def explore(self, now: str, limit: int) -> int:
        """Queue up to `limit` explorations, stalest (never run first) among the due agents."""
        now_s, started = _s(now), 0
        while started < limit:
            batch = self._explore_due.pop_due(now_s, limit - started)
            if not batch:
                break
            for entry in batch:
                self._popped.append((self._explore_due, entry))
                started += int(self._explore_one(entry[1], now, now_s))
        return started

    def _explore_one(self, agent: str, now: str, now_s: float) -> bool:
        rule = self._rules.get(agent)
        state = self._current(agent)
        if rule is None or state.in_flight is not None or state.pending:
            return False  # no longer exploring, or busy: re-queued when its run ends
        due_s = self._explore_due_s(agent, rule)
        if due_s > now_s:  # a stale hint: the agent ran since it was queued
            self._explore_due.push(due_s, agent)
            return False
        reason = self._refusal(agent, "exploration")
        if reason is not None:
            self._refuse(agent, "exploration", reason, now)
            self._explore_due.push(now_s + REFUSED_RECHECK_S, agent)
            return False
        request_id = activation_id(agent, [f"explore:{state.activations_requested}"])
        request = ActivationRequested(activation_id=request_id, agent=agent, kind="exploration", priority="low",
                                      requested_at=now)
        self._set(self._started(state, request, (), now, explorations=1))
        return True

    def overdue(self, now: str) -> list[tuple[str, str]]:
        """(agent, activation id) of in-flight activations old enough to be checked for a lease."""
        found = []
        for entry in self._stuck_due.pop_due(_s(now)):
            self._popped.append((self._stuck_due, entry))
            state = self._agents.get(entry[1])
            if state is not None and state.in_flight is not None and state.in_flight.activation_id == entry[2]:
                found.append((entry[1], entry[2]))
        return found

    def still_running(self, agent: str, activation: str, now: str) -> None:
        """Its lease is held: look again a while later."""
        self._stuck_due.push(_s(now) + self.stuck_after_s / 4, agent, activation)

    def prepare(self, now: str) -> Changes:
        """Schedule every touched idle agent with pending work; return what the batch changed."""
        for agent in list(self._before):
            state = self._agents[agent]
            if state.in_flight is None and state.pending:
                reason = self._refusal(agent, "notification")
                if reason is None:
                    self._blocked.discard(agent)
                    self._set(self._start(state, now))
                else:
                    self._blocked.add(agent)
                    self._refuse(agent, "notification", reason, now)
        self._changes.agents = {agent: self._agents[agent] for agent in self._before}
        return self._changes

    def _refusal(self, agent: str, kind: str) -> str | None:
        """Why `agent`'s work of `kind` may not start now (paused, or the gate's reason), or None."""
        return PAUSED_REASON if agent in self.paused else self.gate(agent, kind, False)

    def _refuse(self, agent: str, kind: str, reason: str, now: str) -> None:
        key = f"{kind}:{reason}"
        if self._refused.get(agent) != key:
            self._refused[agent] = key
            self._changes.refusals.append(SchedulingRefused(agent=agent, kind=kind, reason=reason, at=now))

    def _start(self, state: AgentState, now: str) -> AgentState:
        chosen, rest = _pick(state.pending)
        ids = tuple(n.id for n in chosen)
        priority = min((PRIORITY_OF_TYPE[n.type] for n in chosen), key=PRIORITY_RANK.__getitem__)
        request = ActivationRequested(activation_id=activation_id(state.agent, ids), agent=state.agent,
                                      kind="notification", priority=priority, notifications=list(chosen),
                                      requested_at=now)
        return self._started(state, request, rest, now)

    def _started(self, state: AgentState, request: ActivationRequested, rest: tuple[Notification, ...], now: str,
                 *, explorations: int = 0) -> AgentState:
        self._changes.requests.append(request)
        self._refused.pop(state.agent, None)
        self._stuck_due.push(_s(now) + self.stuck_after_s, state.agent, request.activation_id)
        ids = tuple(n.id for n in request.notifications)
        return msgspec.structs.replace(
            state,
            in_flight=InFlight(activation_id=request.activation_id, priority=request.priority, notification_ids=ids,
                               requested_at=now, kind=request.kind),
            pending=rest,
            last_requested_at=now,
            activations_requested=state.activations_requested + 1,
            explorations_requested=state.explorations_requested + explorations,
        )

    def commit(self) -> None:
        self._before.clear()
        self._popped = []
        self._changes = Changes()

    def rollback(self) -> None:
        for agent, before in self._before.items():
            self._store(agent, before)
            if before is not None and before.in_flight is None and before.pending:
                self._blocked.add(agent)
        for queue, entry in self._popped:  # due entries taken by this batch are due again
            queue.push(*entry)
        self.commit()


def _s(stamp: str) -> float:
    return epoch_s(stamp) or 0.0
