"""The metrics stage: ended activations' consumption to the Hub, and Prometheus metrics (contract §6).

`run(ctx)` reads the `metrics` durable consumer on RUNS (`completed`/`failed` only) in batches of
CONSUMPTION_BATCH_SIZE (a partial batch waits at most CONSUMPTION_FLUSH_SECONDS), posts each batch to
`POST /system/consumption` with the system key and acknowledges it only once the Hub accepted it
(see `reporter`), through the shared worker (`runtime.worker`). Ready only when NATS and the Hub are
reachable and the consumer runs (a consumer that dies is started again, see `service.supervise`).
"""

from __future__ import annotations

import asyncio

from botburrow.hub.breaker import CircuitBreaker
from botburrow.hub.client import HubClient
from botburrow.hub.probe import keep_probing
from botburrow.runtime import service
from botburrow.runtime.service import StageContext, supervise
from botburrow.runtime.worker import Batches, Worker
from botburrow.secrets import read_secret
from botburrow.settings import MetricsSettings, SettingsError
from services.metrics.reporter import Reporter, observe
from streams.topology import METRICS_CONSUMER

STAGE = "metrics"
# A Hub that is down is tried again after a few flush periods, not hammered (and not ignored for long).
BREAKER_COOLDOWN_FLUSHES = 2.5
PROBE_INTERVAL_S = 5.0

__all__ = ["STAGE", "Reporter", "main", "observe", "run"]


async def run(ctx: StageContext[MetricsSettings]) -> None:
    flush_s = ctx.settings.consumption_flush_seconds
    system_key = read_secret("hub-api-key", environ=ctx.environ)
    if not system_key:
        raise SettingsError(["the Hub system key is not set (secret file hub-api-key in SECRETS_DIR, or HUB_API_KEY)"])
    hub = HubClient(ctx.settings.hub_url, system_key=system_key,
                    breaker=CircuitBreaker(cooldown_s=BREAKER_COOLDOWN_FLUSHES * flush_s))
    ctx.health.add_check("hub", lambda: hub.available)
    reporter = Reporter(hub, ctx.stop)
    batch = ctx.settings.consumption_batch_size

    def worker() -> Worker:  # a fresh one for each (re)start of the consumer
        fetch = Batches(batch=batch, wait_s=flush_s)
        return Worker.of(ctx.bus, STAGE, [METRICS_CONSUMER], fetch, reporter.on_batch, batch_size=batch)

    try:
        await asyncio.gather(
            supervise(ctx.health, "hub-probe", lambda: keep_probing(hub, ctx.stop), ctx.stop),
            supervise(ctx.health, "consumer", lambda: worker().run(ctx.stop), ctx.stop),
        )
    finally:
        await hub.aclose()


def main() -> None:
    service.main(STAGE, run)
