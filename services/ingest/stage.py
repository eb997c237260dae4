"""The ingest stage: every POLL_INTERVAL_SECONDS, each known agent's unread Hub notifications onto
NOTIFICATIONS, marked read on the Hub only after JetStream acknowledged them (see `poller`).

The known agents are those in the `configs` bucket; an agent without a Hub key is skipped. The Hub
being down does not stop the stage: it reports not ready (`/readyz` check `hub`) and recovers by
itself on a later round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from botburrow.definitions.directory import AgentDirectory
from botburrow.hub.breaker import CircuitBreaker
from botburrow.hub.client import HubClient
from botburrow.runtime import service
from botburrow.runtime.service import StageContext
from botburrow.secrets import AgentKeys
from botburrow.settings import IngestSettings
from services.ingest.poller import Poller, PollReport

STAGE = "ingest"
# Longest cool-down of the Hub circuit: a Hub that is back is noticed within one more round.
MAX_BREAKER_COOLDOWN_S = 30.0

__all__ = ["STAGE", "PollReport", "Poller", "main", "run"]
log = logging.getLogger(__name__)


def hub_client(hub_url: str, poll_interval_s: float) -> HubClient:
    return HubClient(hub_url, breaker=CircuitBreaker(cooldown_s=min(MAX_BREAKER_COOLDOWN_S, poll_interval_s)))


async def run(ctx: StageContext[IngestSettings]) -> None:
    interval_s = ctx.settings.poll_interval_seconds
    hub = hub_client(ctx.settings.hub_url, interval_s)
    ctx.health.add_check("hub", lambda: hub.available)
    keys = AgentKeys(ctx.environ)

    async def key_of(agent: str) -> str | None:
        # Key files are read off the event loop (a mounted Kubernetes secret may be slow to read).
        return await asyncio.to_thread(keys.get, agent)

    poller = Poller(hub, ctx.bus, key_of)
    directory = await AgentDirectory.open(ctx.bus)
    ctx.health.add_check("definitions", lambda: directory.following)

    async def poll_forever() -> None:
        while not ctx.stop.is_set():
            report = await poller.poll_once(directory.agents())
            if not report.published and not report.errors:
                await hub.probe()  # no agent call this round: learn whether the Hub answers, for /readyz
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctx.stop.wait(), interval_s)

    try:
        # A round that raises (a bug, NATS trouble) must not end polling for good: not ready, then again.
        await service.supervise(ctx.health, "poll", poll_forever, ctx.stop)
    finally:
        await directory.close()
        await hub.aclose()


def main() -> None:
    service.main(STAGE, run)
