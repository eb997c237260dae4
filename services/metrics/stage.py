"""The metrics stage: ended activations' consumption to the Hub, and Prometheus metrics (contract §6).

`run(ctx)` reads the `metrics` durable consumer on RUNS (`completed`/`failed` only) in batches of
CONSUMPTION_BATCH_SIZE (a partial batch waits at most CONSUMPTION_FLUSH_SECONDS), posts each batch to
`POST /system/consumption` with the system key and acknowledges it only once the Hub accepted it
(see `reporter`), through the shared worker (`runtime.worker`). Every batch also goes to the local
ledger (`ledger`, bucket `budget-ledger`), whose budget health against BUDGETS_FILE is rewritten every
HEALTH_INTERVAL_S for the scheduler. Without a system key (a Hub like Moltbook has none) or on a Hub
without `/system/consumption`, the ledger alone. Ready only when NATS and the Hub are reachable and the
consumer runs (a consumer that dies is started again, see `service.supervise`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

import msgspec
import yaml

from botburrow import tracing
from botburrow.hub.capabilities import CapabilityTracker
from botburrow.hub.connect import hub_client_for_stage
from botburrow.hub.probe import keep_probing
from botburrow.runtime import service
from botburrow.runtime.service import StageContext, supervise
from botburrow.runtime.worker import Batches, Worker
from botburrow.secrets import read_secret
from botburrow.settings import MetricsSettings, SettingsError
from services.metrics.ledger import Budgets, Ledger, ended_since
from services.metrics.reporter import Reporter, observe
from services.metrics.traces import TraceExporter
from streams.topology import BUDGET_LEDGER, METRICS_CONSUMER, TRACES_CONSUMER

STAGE = "metrics"
# A Hub that is down is tried again after a few flush periods, not hammered (and not ignored for long).
BREAKER_COOLDOWN_FLUSHES = 2.5
PROBE_INTERVAL_S = 5.0
HEALTH_INTERVAL_S = 30.0  # a new budget period shows within this; the scheduler's cache is as long

log = logging.getLogger(__name__)

__all__ = ["STAGE", "Reporter", "main", "observe", "run"]


async def run(ctx: StageContext[MetricsSettings]) -> None:
    flush_s = ctx.settings.consumption_flush_seconds
    system_key = read_secret("hub-api-key", environ=ctx.environ)
    if not system_key:
        log.warning("no Hub system key: consumption goes to the local ledger only (budget-ledger)")
    hub = await hub_client_for_stage(ctx.settings, ctx.bus, system_key=system_key,
                                     breaker_cooldown_s=BREAKER_COOLDOWN_FLUSHES * flush_s)
    ctx.health.add_check("hub", lambda: hub.available)
    try:
        budgets = Budgets.load(ctx.settings.budgets_file)
    except (OSError, ValueError, yaml.YAMLError, msgspec.ValidationError) as exc:
        raise SettingsError([f"BUDGETS_FILE: {exc}"[:500]]) from None
    ledger = Ledger(await ctx.bus.kv(BUDGET_LEDGER.name), budgets)
    reporter = Reporter(hub, ctx.stop, ledger=ledger, ended_since=functools.partial(ended_since, ctx.bus),
                        reporting=bool(system_key),
                        capabilities=CapabilityTracker(reprobe_after_s=ctx.settings.consumption_recheck_seconds))
    batch = ctx.settings.consumption_batch_size

    def worker() -> Worker:  # a fresh one for each (re)start of the consumer
        fetch = Batches(batch=batch, wait_s=flush_s)
        return Worker.of(ctx.bus, STAGE, [METRICS_CONSUMER], fetch, reporter.on_batch, batch_size=batch)

    # The trace exporter; without OTEL_EXPORTER_OTLP_ENDPOINT it only acknowledges, so its durable never lags.
    exporter = TraceExporter(ctx.bus, tracing.sink(STAGE))

    def traces() -> Worker:
        fetch = Batches(batch=batch, wait_s=flush_s)
        return Worker.of(ctx.bus, STAGE, [TRACES_CONSUMER], fetch, exporter.on_batch, batch_size=batch)

    try:
        await asyncio.gather(
            supervise(ctx.health, "hub-probe", lambda: keep_probing(hub, ctx.stop), ctx.stop),
            supervise(ctx.health, "consumer", lambda: worker().run(ctx.stop), ctx.stop),
            supervise(ctx.health, "budget-health", lambda: keep_health(ledger, ctx.stop), ctx.stop),
            supervise(ctx.health, "traces", lambda: traces().run(ctx.stop), ctx.stop),
        )
    finally:
        await hub.aclose()


async def keep_health(ledger: Ledger, stop: asyncio.Event, interval_s: float = HEALTH_INTERVAL_S) -> None:
    """The ledger's budget health, rewritten every `interval_s` (a new period starts healthy)."""
    while not stop.is_set():
        await ledger.write_health()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


def main() -> None:
    service.main(STAGE, run)
