"""Consumption reporting: each ended activation's ActivationMetrics to the Hub, then to Prometheus.

A batch of `completed`/`failed` run events is posted as one `POST /system/consumption` and
acknowledged only after the Hub accepted it. While the Hub is down or refusing, the batch is held
(its messages kept alive with `in_progress()`, so no delivery is burned and nothing reaches the DLQ)
and retried with capped backoff; on shutdown it is handed back (`Retry`) for another pod. A repeated
`activation_id` is harmless to the Hub (contract §1), so redelivery after a crash loses nothing. Events
the Hub rejects as invalid (a 4xx other than 401/403/429) are retried one by one and only the
refused ones are dead-lettered.

A Hub without `/system/consumption` (Moltbook: `HubEndpointMissing`), or a stage without a system key,
is not a failure: every batch still goes to the local ledger (`ledger`, always written) and Prometheus,
and is acknowledged, with no dead letter; the first RUNS sequence not reported is kept in the ledger
(`unreported`). The route is tried again when due (`hub.capabilities`). Once the Hub accepts it, the reporter first
posts the ended activations of RUNS from that sequence up to its current batch, then deletes the mark,
then posts the batch: no gap (RUNS keeps them), and no double report (the batch itself is excluded from
the catch-up; an overlap after a crash is a repeated `activation_id`, harmless to the Hub, contract §1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from prometheus_client import Counter, Histogram

from botburrow.hub.capabilities import CapabilityTracker
from botburrow.hub.errors import (
    HubAuthError,
    HubEndpointMissing,
    HubError,
    HubNotFound,
    HubRateLimited,
    HubUnavailable,
)
from botburrow.runtime.consumer import Item, Retry
from schemas.events import ActivationMetrics, RunCompleted, RunFailed
from services.metrics.ledger import Ledger

log = logging.getLogger(__name__)

ACTIVATIONS = Counter("botburrow_activation", "Ended activations", ["agent_id", "tool_type", "status"])
DURATION = Histogram("botburrow_activation_duration_seconds", "Activation duration, claim to end",
                     ["agent_id", "tool_type"], buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1200, 3600))
TOKENS = Counter("botburrow_tokens", "Model tokens used by activations", ["agent_id", "tool_type", "direction"])
REPORTED = Counter("botburrow_consumption_reported_total", "Consumption events the Hub accepted")
REPORT_FAILURES = Counter("botburrow_consumption_report_failures_total", "Failed consumption posts", ["kind"])

HEARTBEAT_S = 10.0  # a third of the `metrics` consumer's ack_wait
MAX_BACKOFF_S = 10.0

CATCH_UP_CHUNK = 100  # events per catch-up POST
# The ended activations of RUNS (with their sequence) from one stream sequence up to (not including) another.
EndedSince = Callable[[int, int], Awaitable[list[tuple[int, ActivationMetrics]]]]


class ConsumptionHub(Protocol):
    async def report_consumption(self, events: list[ActivationMetrics]) -> int: ...


def observe(metrics: ActivationMetrics) -> None:
    ACTIVATIONS.labels(metrics.agent_id, metrics.tool_type, metrics.outcome).inc()
    DURATION.labels(metrics.agent_id, metrics.tool_type).observe(max(0.0, metrics.duration_seconds))
    TOKENS.labels(metrics.agent_id, metrics.tool_type, "input").inc(max(0, metrics.tokens_input))
    TOKENS.labels(metrics.agent_id, metrics.tool_type, "output").inc(max(0, metrics.tokens_output))
    # "input" is the uncached input; what the prompt cache wrote and served is billed apart (issue 18).
    TOKENS.labels(metrics.agent_id, metrics.tool_type, "cache_write").inc(max(0, metrics.tokens_cache_write))
    TOKENS.labels(metrics.agent_id, metrics.tool_type, "cache_read").inc(max(0, metrics.tokens_cache_read))


def _is_invalid(exc: HubError) -> bool:
    """A refusal of the content itself: retrying the same events unchanged cannot succeed."""
    return (type(exc) in (HubError, HubNotFound)) and 400 <= exc.status < 500


def _consistent(item: Item) -> bool:
    """The consumption event names the activation and agent of its run event (the codec checked those
    against the subject), else it is rejected: the Hub and the Prometheus labels would believe it."""
    event, metrics = item.payload, item.payload.metrics
    if (metrics.activation_id, metrics.agent_id) == (event.activation_id, event.agent):
        return True
    item.reject(f"metrics name activation {metrics.activation_id[:100]!r} of agent {metrics.agent_id[:100]!r}, "
                f"not the event's {event.activation_id[:100]!r} of {event.agent[:100]!r}", "$.metrics")
    return False


def _seq(item: Item) -> int:
    return int(item.msg.metadata.sequence.stream)


class Reporter:
    def __init__(self, hub: ConsumptionHub, stop: asyncio.Event, *, backoff_base_s: float = 0.5,
                 ledger: Ledger | None = None, ended_since: EndedSince | None = None, reporting: bool = True,
                 capabilities: CapabilityTracker | None = None) -> None:
        self.hub, self.stop = hub, stop
        self.backoff_base_s = backoff_base_s
        self.ledger, self.ended_since = ledger, ended_since
        self.reporting = reporting  # False: no system key, the ledger alone
        # `system` marked absent on the Hub's "endpoint not found", tried again once it is due.
        self.capabilities = capabilities or CapabilityTracker()

    @property
    def route_absent(self) -> bool:
        return self.capabilities.absent("system")

    async def on_batch(self, items: list[Item]) -> None:
        """Batch handler for the `metrics` consumer on RUNS (completed/failed)."""
        ended = [item for item in items if isinstance(item.payload, RunCompleted | RunFailed)
                 and _consistent(item)]
        if not ended:
            return
        if self.ledger is not None:
            await self.ledger.record(item.payload.metrics for item in ended)
            await self.ledger.write_health()  # the scheduler sees new spend at once, not at the next tick
        if not self.reporting or self.route_absent:
            await self._keep_unreported(ended)
            return
        try:
            await self._catch_up(ended)
        except HubEndpointMissing:
            await self._route_missing(ended)
            return
        try:
            await self._post_until_accepted(ended, [item.payload.metrics for item in ended])
        except HubEndpointMissing:
            await self._route_missing(ended)
            return
        except HubError as exc:
            if not _is_invalid(exc):
                raise
            await self._post_one_by_one(ended)
            return
        for item in ended:
            observe(item.payload.metrics)

    async def _route_missing(self, items: list[Item]) -> None:
        log.warning("the Hub has no /system/consumption: the local ledger only, asked again later")
        self.capabilities.mark_absent("system")
        await self._keep_unreported(items)

    async def _keep_unreported(self, items: list[Item]) -> None:
        """Acknowledged without a report (nor a dead letter): counted in the ledger, marked for a catch-up."""
        if self.ledger is not None:
            await self.ledger.mark_unreported(min(_seq(item) for item in items))
        for item in items:
            observe(item.payload.metrics)

    async def _catch_up(self, items: list[Item]) -> None:
        """Report what was kept unreported, from its mark up to this batch, then clear the mark."""
        if self.ledger is None or self.ended_since is None:
            return
        from_seq = await self.ledger.unreported_from()
        if from_seq is None:
            return
        # Up to the batch's last message, but for the batch's own (it posts them itself next): a redelivered
        # message older than the mark must not end the catch-up before the rest.
        own = {_seq(item) for item in items}
        until_seq = max(own) + 1
        found = await self.ended_since(from_seq, until_seq) if from_seq < until_seq else []
        events = [metrics for seq, metrics in found if seq not in own]
        for start in range(0, len(events), CATCH_UP_CHUNK):
            chunk = events[start:start + CATCH_UP_CHUNK]
            try:
                await self._post_until_accepted(items, chunk)
            except HubError as exc:
                if not _is_invalid(exc):
                    raise
                await self._catch_up_one_by_one(items, chunk)
        await self.ledger.reported()
        log.info("consumption reporting resumed", extra={"from_seq": from_seq, "caught_up": len(events)})

    async def _post_one_by_one(self, items: list[Item]) -> None:
        for item in items:
            try:
                await self._post_until_accepted([item], [item.payload.metrics])
            except HubError as exc:
                if not _is_invalid(exc):
                    raise
                item.reject(f"Hub refused the consumption event: {exc}")
                continue
            observe(item.payload.metrics)

    async def _post_until_accepted(self, items: list[Item], events: list[ActivationMetrics]) -> None:
        attempt = 0
        while True:
            try:
                accepted = await self.hub.report_consumption(events)
            except (HubUnavailable, HubRateLimited, HubAuthError) as exc:
                # Down, throttling, or our system key refused (an operator must fix it): hold, do not lose.
                kind = type(exc).__name__
                REPORT_FAILURES.labels(kind).inc()
                attempt += 1
                delay_s = self._delay_s(attempt, exc)
                log.warning("consumption not accepted yet, holding the batch",
                            extra={"events": len(events), "attempt": attempt, "error": kind, "detail": str(exc),
                                   "retry_in_s": round(delay_s, 2)})
                await self._hold(items, delay_s)
                continue
            REPORTED.inc(len(events))
            log.info("consumption reported", extra={"events": len(events), "accepted": accepted})
            return

    async def _catch_up_one_by_one(self, items: list[Item], events: list[ActivationMetrics]) -> None:
        for event in events:
            try:
                await self._post_until_accepted(items, [event])
            except HubError as exc:
                if not _is_invalid(exc):
                    raise
                # Not our messages to dead-letter (acknowledged long ago, still in RUNS): logged.
                log.warning("catch-up consumption event refused by the Hub, skipped",
                            extra={"activation_id": event.activation_id, "error": str(exc)[:300]})

    def _delay_s(self, attempt: int, exc: HubError) -> float:
        if isinstance(exc, HubRateLimited) and exc.retry_after_s is not None:
            return exc.retry_after_s
        return min(MAX_BACKOFF_S, self.backoff_base_s * 2 ** (attempt - 1))

    async def _hold(self, items: list[Item], delay_s: float) -> None:
        """Wait `delay_s`, keeping the messages alive; on shutdown hand them back for redelivery."""
        remaining_s = delay_s
        while remaining_s > 0:
            if self.stop.is_set():
                raise Retry(1.0, "stopping: batch handed back")
            step_s = min(remaining_s, HEARTBEAT_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), step_s)
            remaining_s -= step_s
            await asyncio.gather(*(item.msg.in_progress() for item in items))
        if self.stop.is_set():
            raise Retry(1.0, "stopping: batch handed back")
