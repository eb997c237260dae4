"""The scheduler's I/O around `SchedulerState`, for one partition of the agents.

The partition's consumer delivers notifications and `completed`/`failed` run events in stream order;
each batch goes through one state under one lock: decide, publish every activation request (`act:<id>`
so JetStream drops a repeat) and refusal event, write every changed agent to `agent-state`, and only
then let the batch be acknowledged. A failure anywhere rolls the state back and the whole batch is
redelivered. `tick` does the timed work: lost in-flight activations, budget re-checks, exploration.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

import msgspec
from nats.js.api import PubAck
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from prometheus_client import Counter, Gauge

from botburrow.runtime.bus import Bus
from botburrow.runtime.consumer import Item
from botburrow.runtime.election import RIDE_OUT_S, is_transient
from botburrow.runtime.kvread import bucket_entries
from botburrow.tracing import emit_decisions, now_ns, request_key
from schemas.agent import AgentDefinition
from schemas.events import NotificationReceived, RunCompleted, RunFailed
from services.scheduler.budget import BudgetGate
from services.scheduler.due import ExploreRule
from services.scheduler.state import AgentState, Changes, Responds, SchedulerState
from streams import subjects

log = logging.getLogger(__name__)

APPLY_ATTEMPTS = 4
APPLY_BACKOFF_S = 0.5
APPLY_MAX_BACKOFF_S = 2.0
PUBLISH_TIMEOUT_S = 5.0
# An agent's queued notifications live in its `agent-state` value, which must stay under NATS's 1 MiB max
# payload: at most this many of at most 32 KiB each (`topology.NOTIFICATION.max_bytes`). One more is dead-lettered
# with the reason; without the bound a flood made a value too big to write, and each later message of the
# partition waited out the retries behind it.
MAX_PENDING_NOTIFICATIONS = 24

SCHEDULED = Counter("botburrow_scheduler_activations_scheduled_total", "Activation requests published",
                    ["priority"])
MERGED = Counter("botburrow_scheduler_notifications_merged_total",
                 "Notifications that arrived while their agent had an activation in flight (join the next one)")
SKIPPED = Counter("botburrow_scheduler_notifications_skipped_total",
                  "Notifications that lead to no activation", ["reason"])
IN_FLIGHT = Gauge("botburrow_scheduler_agents_in_flight", "Agents with a queued or running activation")
REFUSED = Counter("botburrow_scheduler_refusals_total", "Work the scheduler may not start now, by reason",
                  ["kind", "reason"])
LOST = Counter("botburrow_scheduler_activations_lost_total",
               "In-flight activations given up after their age with no lease held (their agent is freed)")

_state_decoder = msgspec.json.Decoder(AgentState)
_encoder = msgspec.json.Encoder()


class AgentLookup(Protocol):
    """The agent definitions the scheduler reads (an `AgentDirectory` in production)."""

    def get(self, name: str) -> AgentDefinition | None: ...


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _all_acked(futures: list[asyncio.Future[PubAck]]) -> None:
    """Wait for every PubAck (the first error raises); give up on the rest after PUBLISH_TIMEOUT_S.

    A counter on done-callbacks rather than `wait_for(gather(...))`: this runs for every batch, and
    that pair was a tenth of the scheduler's time at 1,000 notifications/s."""
    if not futures:
        return
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    left = len(futures)

    def settled(future: asyncio.Future[PubAck]) -> None:
        nonlocal left
        left -= 1
        if not waiter.done() and (left == 0 or future.cancelled() or future.exception() is not None):
            waiter.set_result(None)

    for future in futures:
        future.add_done_callback(settled)
    timer = loop.call_later(PUBLISH_TIMEOUT_S, lambda: None if waiter.done() else waiter.set_result(None))
    try:
        await waiter
        errors = [error for f in futures if f.done() and not f.cancelled() and (error := f.exception()) is not None]
        if errors:
            raise errors[0]
        if left:
            raise TimeoutError(f"{left} PubAcks missing after {PUBLISH_TIMEOUT_S}s")
    finally:
        timer.cancel()
        for future in futures:
            future.cancel()  # no-op once done; frees nats-py's pending slot of an unanswered one


class NotOwner(Exception):
    """This replica's lease on the partition may have lapsed: do not act, let the batch be redelivered."""


async def load_states(kv: KeyValue, keep: Callable[[str], bool] = lambda key: True) -> list[AgentState]:
    """Every agent's persisted state (of the keys `keep` accepts), read through one watcher."""
    states: list[AgentState] = []
    for key, entry in (await bucket_entries(kv)).items():
        if not entry.value or not keep(key):
            continue
        try:
            states.append(_state_decoder.decode(entry.value))
        except msgspec.DecodeError as exc:
            log.error("unreadable agent state skipped", extra={"key": key, "error": str(exc)})
    return states


class Scheduler:
    """One partition's scheduling (or all agents, with the defaults)."""

    def __init__(self, bus: Bus, kv: KeyValue, agents: AgentLookup, state: SchedulerState | None = None, *,
                 budget: BudgetGate | None = None, owner: Callable[[], bool] = lambda: True,
                 min_gap_s: float | None = None) -> None:
        self.bus, self.kv, self.agents = bus, kv, agents
        self.state = state if state is not None else SchedulerState()
        self.budget = budget or BudgetGate(None)
        self.owner = owner
        self.min_gap_s = min_gap_s
        self.state.gate = self._gate
        self._lock = asyncio.Lock()
        self._budget_version = -1
        # What each agent answers, kept with the definition it was read from (a struct per notification
        # showed in profiles at thousands a second).
        self._responds: dict[str, tuple[AgentDefinition, Responds]] = {}

    def _gate(self, agent: str, kind: str, critical: bool) -> str | None:
        definition = self.agents.get(agent)
        return self.budget.refusal(definition.config.type if definition else "", kind, critical)

    def configure(self, name: str, definition: AgentDefinition | None) -> None:
        """An agent was added, changed or removed: (re)set its exploration rule."""
        self._responds.pop(name, None)
        rule = None
        if definition is not None:
            rule = ExploreRule.of(definition.config) if self.min_gap_s is None else \
                ExploreRule.of(definition.config, self.min_gap_s)
        self.state.configure(name, rule)

    async def on_batch(self, items: list[Item]) -> None:
        """Batch handler for the partition's consumer: notifications and ended runs, in stream order."""
        async with self._lock:
            self.state.begin()
            try:
                for item in items:
                    if isinstance(item.payload, RunCompleted | RunFailed):
                        self._run_ended(item.payload)
                    elif isinstance(item.payload, NotificationReceived):
                        self._notification(item)
                    # other run events are not sourced into SCHEDULER; anything else is ignored
                await self._apply(self.state.prepare(utc_now()))
            except BaseException:
                self.state.rollback()
                raise
            self.state.commit()

    on_notifications = on_runs = on_batch

    def _notification(self, item: Item) -> None:
        event = item.payload
        definition = self.agents.get(event.agent)
        if definition is None:
            item.reject(f"unknown agent {event.agent}")
            return
        current = self.state.get(event.agent)
        if current is not None and len(current.pending) >= MAX_PENDING_NOTIFICATIONS \
                and not current.knows(event.notification.id):
            item.reject(f"agent {event.agent} already has {len(current.pending)} notifications waiting")
            return
        cached = self._responds.get(event.agent)
        if cached is None or cached[0] is not definition:
            cached = self._responds[event.agent] = (definition, Responds.of(definition.config))
        verdict = self.state.on_notification(event.agent, event.notification, cached[1])
        if log.isEnabledFor(logging.DEBUG):
            log.debug("notification", extra={"agent": event.agent, "notification_id": event.notification.id,
                                             "type": event.notification.type, "verdict": verdict})

    def _run_ended(self, event: RunCompleted | RunFailed) -> None:
        self.state.on_run_ended(event.agent, event.activation_id, failed=isinstance(event, RunFailed),
                                ended_at=event.metrics.ended_at or event.at, outcome=event.metrics.outcome)

    async def tick(self, explore_limit: int, leases: KeyValue | None = None) -> int:
        """Timed work; returns the explorations queued. Cost: the due and refused agents only."""
        async with self._lock:
            now = utc_now()
            self.state.begin()
            try:
                for agent, activation in self.state.overdue(now):
                    await self._check_lost(leases, agent, activation, now)
                changed = self.budget.version != self._budget_version
                if changed or self.state.blocked_count:
                    self._budget_version = self.budget.version
                    self.state.retry_blocked(explorations=changed)
                explored = self.state.explore(now, explore_limit) if explore_limit > 0 else 0
                await self._apply(self.state.prepare(now))
            except BaseException:
                self.state.rollback()
                raise
            self.state.commit()
            return explored

    async def _check_lost(self, leases: KeyValue | None, agent: str, activation: str, now: str) -> None:
        """Old and no lease held: its runner died (or it never reached one); free the agent."""
        if leases is not None:
            try:
                await leases.get(subjects.token(agent))
                self.state.still_running(agent, activation, now)
                return
            except KeyNotFoundError:
                pass
        log.warning("in-flight activation lost", extra={"agent": agent, "activation_id": activation})
        self.state.on_run_ended(agent, activation, failed=True, ended_at=now, outcome="lost")

    async def _apply(self, changes: Changes) -> None:
        """Publish, then persist; counted only once both succeeded.

        A failure after something was published is retried here with the same changes (msg ids and
        puts make that harmless) rather than rolled back: a rolled-back batch comes back after newer
        messages and could be decided differently, giving the agent a second activation."""
        if (changes.requests or changes.agents) and not self.owner():
            raise NotOwner("partition lease not current")  # nothing published yet: a rollback is safe
        delay_s, started = APPLY_BACKOFF_S, time.monotonic()
        for attempt in itertools.count(1):
            try:
                await self._publish_and_persist(changes)
                break
            except Exception as exc:
                # A leader election lasts seconds: ridden out for as long as this replica still owns the
                # partition, within RIDE_OUT_S (four tries in 3 s fell short on a cluster: the batch, rolled
                # back after its requests were published, could be decided again into second activations).
                riding_out = is_transient(exc) and self.owner() and time.monotonic() - started < RIDE_OUT_S
                if attempt >= APPLY_ATTEMPTS and not riding_out:
                    raise
                log.warning("publish or persist failed, retrying", extra={"attempt": attempt, "error": repr(exc)})
                await asyncio.sleep(delay_s)
                delay_s = min(APPLY_MAX_BACKOFF_S, delay_s * 2)
        self._count(changes)

    async def _publish_and_persist(self, changes: Changes) -> None:
        """Pipelined: every publish of a step in flight at once, one bounded wait per step.

        Requests and refusals are stored before any state that records them is written, so a
        persisted in-flight activation was always published."""
        started_ns = now_ns()
        await _all_acked([
            *[await self.bus.publish_async(subjects.activation(request.priority, request.agent), request,
                                           msg_id=f"act:{request.activation_id}",
                                           trace_id=request_key(request.activation_id,
                                                                [n.id for n in request.notifications]))
              for request in changes.requests],
            *[await self.bus.publish_async(subjects.decision(refusal.agent), refusal,
                                           msg_id=f"dec:{refusal.agent}:{refusal.kind}:{refusal.reason}:{refusal.at}")
              for refusal in changes.refusals],
        ])
        emit_decisions("scheduler", changes.requests, started_ns)  # the decisions' spans (issue 21)
        # A KV put is a publish to the bucket's subject (what `kv.put` does, without a round trip each).
        prefix = self.kv._pre
        await _all_acked([await self.bus.js.publish_async(prefix + subjects.token(agent), _encoder.encode(state))
                          for agent, state in changes.agents.items()])

    def _count(self, changes: Changes) -> None:
        for request in changes.requests:
            SCHEDULED.labels(request.priority).inc()
            log.info("activation requested", extra={"activation_id": request.activation_id, "agent": request.agent,
                                                    "priority": request.priority, "kind": request.kind,
                                                    "notifications": len(request.notifications)})
        for refusal in changes.refusals:
            REFUSED.labels(refusal.kind, refusal.reason).inc()
            log.info("work refused", extra={"agent": refusal.agent, "kind": refusal.kind, "reason": refusal.reason})
        MERGED.inc(changes.merged)
        LOST.inc(changes.lost)
        for reason, count in changes.skipped.items():
            SKIPPED.labels(reason).inc(count)
