"""The scheduler stage: notifications in, at most one queued-or-running activation per agent out.

Agents are split into `SCHEDULER_PARTITIONS` partitions by a subject transform (stream SCHEDULER);
every replica holds a fair share of them through leases in `scheduler-owners` (see `partitions`) and
reads each held partition's durable: notifications and `completed`/`failed` run events of its agents,
in order. Per-agent state lives in memory, persisted to `agent-state` before each batch is
acknowledged. Ticks add exploration (stalest first, under a low-backlog bound), budget refusals
(`agents.sched.decision.<agent>` events) and the freeing of agents whose activation was lost. The
decisions themselves live in `state.SchedulerState` (no I/O).
"""

from __future__ import annotations

import logging
import os
import socket
import uuid

from botburrow.definitions.directory import AgentDirectory
from botburrow.hub.connect import hub_client_for_stage
from botburrow.runtime import service
from botburrow.runtime.service import StageContext
from botburrow.secrets import read_secret
from botburrow.settings import SchedulerSettings
from services.scheduler.budget import BudgetGate, HubOrLedger, LedgerHealth
from services.scheduler.replica import STAGE, Replica, Tuning
from services.scheduler.shell import Scheduler
from services.scheduler.state import SchedulerState
from streams.topology import BUDGET_LEDGER

log = logging.getLogger(__name__)

__all__ = ["STAGE", "Replica", "Scheduler", "SchedulerState", "main", "run"]


def tuning(settings: SchedulerSettings) -> Tuning:
    return Tuning(tick_s=settings.scheduler_tick_seconds, explore_min_gap_s=settings.explore_min_gap_seconds,
                  low_backlog_max=settings.explore_low_backlog_max,
                  stuck_after_s=settings.scheduler_stuck_after_seconds)


async def run(ctx: StageContext[SchedulerSettings]) -> None:
    settings = ctx.settings
    system_key = read_secret("hub-api-key", environ=ctx.environ)
    hub = await hub_client_for_stage(settings, ctx.bus, system_key=system_key) if system_key else None
    if hub is None:
        log.warning("no Hub system key: the budget gate reads the local ledger (budget-ledger)")
    ledger = LedgerHealth(await ctx.bus.kv(BUDGET_LEDGER.name), stale_after_s=settings.budget_stale_seconds)
    budget = BudgetGate(HubOrLedger(hub, ledger), cache_s=settings.budget_cache_seconds,
                        stale_after_s=settings.budget_stale_seconds)
    directory = await AgentDirectory.open(ctx.bus)
    ctx.health.add_check("definitions", lambda: directory.following)
    try:
        replica = Replica(ctx.bus, directory, budget, f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
                          tuning(settings), ctx.health)
        await replica.run(ctx.stop)
    finally:
        await directory.close()
        if hub is not None:
            await hub.aclose()


def main() -> None:
    service.main(STAGE, run)
