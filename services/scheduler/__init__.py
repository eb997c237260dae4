"""The scheduler stage: notifications in, at most one queued-or-running activation per agent out.

`run(ctx)` reads two durable consumers into one `Scheduler` (see `shell`): `scheduler` on
NOTIFICATIONS and `scheduler-runs` on the `completed`/`failed` RUNS events, and keeps per-agent
state in memory, persisted to the `agent-state` bucket before each batch is acknowledged. The
decisions themselves live in `state.SchedulerState` (no I/O).
"""

from __future__ import annotations

import asyncio

from botburrow.definitions.directory import AgentDirectory
from botburrow.runtime import service
from botburrow.runtime.consumer import consume_batches
from botburrow.runtime.service import StageContext
from botburrow.services.scheduler.shell import Scheduler
from botburrow.services.scheduler.state import SchedulerState

STAGE = "scheduler"

__all__ = ["STAGE", "Scheduler", "SchedulerState", "main", "run"]


async def run(ctx: StageContext) -> None:
    directory = await AgentDirectory.open(ctx.bus)
    try:
        scheduler = await Scheduler.open(ctx.bus, directory)
        await asyncio.gather(
            consume_batches(ctx.bus, stage=STAGE, stream="NOTIFICATIONS", durable="scheduler",
                            handler=scheduler.on_notifications, stop=ctx.stop),
            consume_batches(ctx.bus, stage=STAGE, stream="RUNS", durable="scheduler-runs",
                            handler=scheduler.on_runs, stop=ctx.stop),
        )
    finally:
        await directory.close()


def main() -> None:
    service.main(STAGE, run)
