"""The scheduler's I/O around `SchedulerState`: batches in, activation requests and `agent-state` out.

Both consumers (notifications, and the `completed`/`failed` run events) feed one state under one
lock, batch by batch: decide, publish every activation request (`act:<id>` so JetStream drops a
repeat), write every changed agent to `agent-state`, and only then let the batch be acknowledged. A
failure anywhere rolls the state back and the whole batch is redelivered.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Protocol

import msgspec
from nats.js.kv import KeyValue
from prometheus_client import Counter, Gauge

from botburrow.runtime.bus import Bus
from botburrow.runtime.consumer import Item
from botburrow.schemas.agent import AgentDefinition
from botburrow.schemas.events import NotificationReceived, RunCompleted, RunFailed
from botburrow.services.scheduler.state import AgentState, Changes, Responds, SchedulerState
from botburrow.streams import subjects

log = logging.getLogger(__name__)

STATE_BUCKET = "agent-state"

SCHEDULED = Counter("botburrow_scheduler_activations_scheduled_total", "Activation requests published",
                    ["priority"])
MERGED = Counter("botburrow_scheduler_notifications_merged_total",
                 "Notifications that arrived while their agent had an activation in flight (join the next one)")
SKIPPED = Counter("botburrow_scheduler_notifications_skipped_total",
                  "Notifications that lead to no activation", ["reason"])
IN_FLIGHT = Gauge("botburrow_scheduler_agents_in_flight", "Agents with a queued or running activation")

_state_decoder = msgspec.json.Decoder(AgentState)
_encoder = msgspec.json.Encoder()


class AgentLookup(Protocol):
    """The agent definitions the scheduler reads (an `AgentDirectory` in production)."""

    def get(self, name: str) -> AgentDefinition | None: ...


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def load_states(kv: KeyValue) -> list[AgentState]:
    """Every agent's persisted state: the last value of each key, read through one watcher."""
    watcher = await kv.watchall(ignore_deletes=True)
    states: list[AgentState] = []
    try:
        async for entry in watcher:
            if entry is None:  # the marker after the initial values
                break
            if not entry.value:
                continue
            try:
                states.append(_state_decoder.decode(entry.value))
            except msgspec.DecodeError as exc:
                log.error("unreadable agent state skipped", extra={"key": entry.key, "error": str(exc)})
    finally:
        await watcher.stop()
    return states


class Scheduler:
    def __init__(self, bus: Bus, kv: KeyValue, agents: AgentLookup, state: SchedulerState | None = None) -> None:
        self.bus, self.kv, self.agents = bus, kv, agents
        self.state = state or SchedulerState()
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, bus: Bus, agents: AgentLookup) -> Scheduler:
        kv = await bus.kv(STATE_BUCKET)
        states = await load_states(kv)
        scheduler = cls(bus, kv, agents, SchedulerState({s.agent: s for s in states}))
        IN_FLIGHT.set(scheduler.state.in_flight_count)
        log.info("agent state loaded", extra={"agents": len(states)})
        return scheduler

    async def on_notifications(self, items: list[Item]) -> None:
        """Batch handler for the `scheduler` consumer on NOTIFICATIONS."""
        async with self._lock:
            self.state.begin()
            try:
                for item in items:
                    self._notification(item)
                await self._apply(self.state.prepare(utc_now()))
            except BaseException:
                self.state.rollback()
                raise
            self.state.commit()

    def _notification(self, item: Item) -> None:
        event = item.payload
        if not isinstance(event, NotificationReceived):
            item.reject(f"not a notification: {type(event).__name__}")
            return
        definition = self.agents.get(event.agent)
        if definition is None:
            item.reject(f"unknown agent {event.agent}")
            return
        verdict = self.state.on_notification(event.agent, event.notification, Responds.of(definition.config))
        log.debug("notification", extra={"agent": event.agent, "notification_id": event.notification.id,
                                         "type": event.notification.type, "verdict": verdict})

    async def on_runs(self, items: list[Item]) -> None:
        """Batch handler for the `scheduler-runs` consumer: an ended activation frees its agent."""
        async with self._lock:
            self.state.begin()
            try:
                for item in items:
                    event = item.payload
                    if isinstance(event, RunCompleted | RunFailed):
                        self.state.on_run_ended(event.agent, event.activation_id, failed=isinstance(event, RunFailed),
                                                ended_at=event.metrics.ended_at or event.at,
                                                outcome=event.metrics.outcome)
                await self._apply(self.state.prepare(utc_now()))
            except BaseException:
                self.state.rollback()
                raise
            self.state.commit()

    async def _apply(self, changes: Changes) -> None:
        """Publish, then persist; counted only once both succeeded."""
        await asyncio.gather(*(
            self.bus.publish(subjects.activation(request.priority, request.agent), request,
                             msg_id=f"act:{request.activation_id}", trace_id=request.activation_id)
            for request in changes.requests
        ))
        await asyncio.gather(*(
            self.kv.put(subjects.token(agent), _encoder.encode(state)) for agent, state in changes.agents.items()
        ))
        for request in changes.requests:
            SCHEDULED.labels(request.priority).inc()
            log.info("activation requested", extra={"activation_id": request.activation_id, "agent": request.agent,
                                                    "priority": request.priority,
                                                    "notifications": len(request.notifications)})
        MERGED.inc(changes.merged)
        for reason, count in changes.skipped.items():
            SKIPPED.labels(reason).inc(count)
        IN_FLIGHT.set(self.state.in_flight_count)
