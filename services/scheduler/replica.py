"""One scheduler replica: the partitions it holds, their consumers, the directory, the budget, the ticks.

Claiming partitions loads their agents' state from `agent-state` (one watch for all the partitions of
a claim), sets the exploration rules from the agent directory and starts one shared worker each
(`runtime.worker`), under `supervise` (a worker that dies makes the stage not ready and starts again
from the persisted states); a worker reads its durable through a `PartitionFetch` (one pull request
kept outstanding, batches of whatever has arrived). Releasing stops the workers (each hands back what
its last request still brings, and finishes the batch in hand) before the lease is given up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from nats.js.kv import KeyValue

from botburrow.definitions.directory import AgentDirectory
from botburrow.runtime.bus import Bus
from botburrow.runtime.consumer import Item, Retry
from botburrow.runtime.health import Health
from botburrow.runtime.service import supervise
from botburrow.runtime.worker import Worker
from botburrow.settings import SchedulerSettings
from schemas.agent import AgentDefinition
from services.scheduler.budget import BudgetGate
from services.scheduler.partitions import PartitionOwner, partition_of
from services.scheduler.paused import PausedAgents
from services.scheduler.puller import PartitionFetch
from services.scheduler.shell import (
    IN_FLIGHT,
    NotOwner,
    Scheduler,
    load_states,
)
from services.scheduler.state import AgentState, SchedulerState
from streams.topology import (
    ACTIVATIONS,
    AGENT_STATE,
    LEASES,
    RUNNER_CONSUMERS,
    SCHEDULER_CONSUMERS,
    SCHEDULER_OWNERS,
    SCHEDULER_PARTITIONS,
)

log = logging.getLogger(__name__)

STAGE = "scheduler"
FETCH_BATCH = 1000
# An idle partition renews its pull request this often; a released one finishes within it.
PULL_EXPIRES_S = 1.0


@dataclass(frozen=True)
class Tuning:
    """The replica's timings, from its settings (`stage.tuning`); the defaults are the settings' own."""

    tick_s: float = SchedulerSettings.scheduler_tick_seconds
    explore_min_gap_s: float = SchedulerSettings.explore_min_gap_seconds
    # Exploration is queued only while the runners' low backlog is under this (all replicas together).
    low_backlog_max: int = SchedulerSettings.explore_low_backlog_max
    stuck_after_s: float = SchedulerSettings.scheduler_stuck_after_seconds


@dataclass
class Held:
    scheduler: Scheduler | None = None  # None while its states are loading
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Replica:
    def __init__(self, bus: Bus, directory: AgentDirectory, budget: BudgetGate, replica_id: str,
                 tuning: Tuning | None = None, health: Health | None = None) -> None:
        self.bus, self.directory, self.budget, self.replica_id = bus, directory, budget, replica_id
        self.tuning = tuning or Tuning()
        self.health = health or Health(STAGE)
        self.held: dict[int, Held] = {}
        self.owner: PartitionOwner | None = None
        self._kv: KeyValue | None = None
        self._leases: KeyValue | None = None
        self.paused = PausedAgents()  # `botburrow agent pause`: shared by every partition's state

    async def run(self, stop: asyncio.Event) -> None:
        self._kv = await self.bus.kv(AGENT_STATE.name)
        self._leases = await self.bus.kv(LEASES.name)
        self.owner = PartitionOwner(await self.bus.kv(SCHEDULER_OWNERS.name), self.replica_id,
                                    on_claim=self.claim, on_release=self.release)
        self.directory.add_listener(self.on_definition)
        await asyncio.gather(self.owner.run(stop), self._ticks(stop),
                             supervise(self.health, "paused", lambda: self.paused.follow(self.bus, stop), stop))

    # --- partitions ----------------------------------------------------------------------------

    async def claim(self, parts: list[int]) -> None:
        """Start the partitions in the background: loading 100k states must not delay lease renewals."""
        assert self._kv is not None
        loading = asyncio.ensure_future(_load_grouped(self._kv, set(parts)))
        for p in parts:
            held = Held()
            held.task = asyncio.create_task(self._supervised(p, held, loading), name=f"scheduler-p{p}")
            self.held[p] = held

    async def _supervised(self, p: int, held: Held, loading: asyncio.Future[dict[int, list[AgentState]]]) -> None:
        """The partition's consumer, started again (from its persisted states) whenever it dies: a dead
        one made the stage not ready and is never left holding its lease silently."""
        assert self._kv is not None
        kv, claimed = self._kv, [loading]

        async def start() -> None:
            try:
                await self._start(p, held, claimed.pop() if claimed else asyncio.ensure_future(_load_grouped(kv, {p})))
            finally:
                held.scheduler = None  # no tick on a dead partition's state; a restart reloads it

        await supervise(self.health, f"partition-{p}", start, held.stop)

    async def _start(self, p: int, held: Held, loading: asyncio.Future[dict[int, list[AgentState]]]) -> None:
        assert self._kv is not None and self.owner is not None
        kv = self._kv
        while True:
            try:
                states = (await asyncio.shield(loading)).get(p, [])
                break
            except Exception as exc:  # NATS trouble while loading: load this partition again
                log.warning("partition state load failed", extra={"partition": p, "error": repr(exc)})
                await asyncio.sleep(1)
                loading = asyncio.ensure_future(_load_grouped(kv, {p}))
        state = SchedulerState({s.agent: s for s in states}, stuck_after_s=self.tuning.stuck_after_s)
        state.paused = self.paused
        scheduler = Scheduler(self.bus, self._kv, self.directory, state, budget=self.budget,
                              owner=functools.partial(self.owner.valid, p), min_gap_s=self.tuning.explore_min_gap_s)
        for name, definition in self.directory.agents().items():
            if partition_of(name) == p:  # cached: cheap for every partition of a claim
                scheduler.configure(name, definition)
        held.scheduler = scheduler
        log.info("partition started", extra={"partition": p, "agents": len(states)})
        await self._consume(p, held)

    async def release(self, parts: list[int]) -> None:
        stopping = [self.held.pop(p) for p in parts if p in self.held]
        for held in stopping:
            held.stop.set()
            if held.scheduler is None and held.task is not None:
                held.task.cancel()  # still loading: nothing to finish
        await asyncio.gather(*(held.task for held in stopping if held.task), return_exceptions=True)

    async def _consume(self, p: int, held: Held) -> None:
        """The partition's worker, until the partition is released or the stage stops."""
        assert held.scheduler is not None
        scheduler = held.scheduler

        async def handler(items: list[Item]) -> None:
            try:
                await scheduler.on_batch(items)
            except NotOwner as exc:  # not this batch's fault: redeliver it whole, to whoever owns it
                raise Retry(1.0, str(exc)) from exc

        owner = self.owner
        fetch = PartitionFetch(self.bus.nc, batch=FETCH_BATCH, expires_s=PULL_EXPIRES_S,
                               owned=lambda: owner is None or owner.valid(p))
        consumers = [SCHEDULER_CONSUMERS[p]]
        await Worker.of(self.bus, STAGE, consumers, fetch, handler, batch_size=FETCH_BATCH).run(held.stop)

    # --- config changes, ticks -------------------------------------------------------------------

    def on_definition(self, kind: Any, name: str, definition: Any) -> None:
        if kind != "agent":
            return
        held = self.held.get(partition_of(name))
        if held is not None and held.scheduler is not None:
            held.scheduler.configure(name, definition if isinstance(definition, AgentDefinition) else None)

    async def _ticks(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.tuning.tick_s)
            if stop.is_set():
                break
            try:
                await self.tick()
            except Exception as exc:  # one bad tick must not end the stage
                log.warning("tick failed", extra={"error": repr(exc)})

    async def tick(self) -> int:
        """Refresh the budget, then each held partition's timed work; returns explorations queued."""
        await self.budget.refresh()
        limit = await self._explore_allowance()
        explored = 0
        schedulers = [held.scheduler for held in self.held.values() if held.scheduler is not None]
        for scheduler in schedulers:
            explored += await scheduler.tick(max(0, limit - explored), self._leases)
        IN_FLIGHT.set(sum(scheduler.state.in_flight_count for scheduler in schedulers))
        return explored

    async def _explore_allowance(self) -> int:
        """This replica's share of the room left under the low-backlog bound."""
        try:
            info = await self.bus.js.consumer_info(ACTIVATIONS.name, RUNNER_CONSUMERS["low"].durable)
            backlog = info.num_pending + info.num_ack_pending
        except Exception:  # no runner consumer yet: treat as empty
            backlog = 0
        room = max(0, self.tuning.low_backlog_max - backlog)
        return math.ceil(room * len(self.held) / SCHEDULER_PARTITIONS)


async def _load_grouped(kv: KeyValue, parts: set[int]) -> dict[int, list[AgentState]]:
    """The persisted states of these partitions' agents, by partition (one watch, one pass)."""
    grouped: dict[int, list[AgentState]] = {}
    for state in await load_states(kv, lambda key: partition_of(key) in parts):
        grouped.setdefault(partition_of(state.agent), []).append(state)
    return grouped

