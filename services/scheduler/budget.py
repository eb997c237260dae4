"""The budget gate: `GET /system/budget-health`, cached, turned into refusals per tool type.

Where the Hub has no budget health (no `/system/*`, as on Moltbook, or no system key), the gate reads the
local ledger's instead (`LedgerHealth`: key `health` of bucket `budget-ledger`, written by the metrics
stage against BUDGETS_FILE, contract §7); `HubOrLedger` picks, and asks the Hub again when due.

contract §1: `throttle` stops exploration for that tool type, `critical` stops all new work but work marked
critical. The status is refreshed at most every `cache_s`; while the Hub does not answer, the last
known status holds for `stale_after_s`, then the gate fails safe: no exploration at all (notifications
go on, so a Hub outage never silences agents that were asked something).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

import msgspec
from nats.js.kv import KeyValue
from prometheus_client import Gauge

from botburrow.hub.capabilities import CapabilityTracker
from botburrow.hub.errors import HubAuthError, HubEndpointMissing
from botburrow.settings import SchedulerSettings
from schemas.hub import BudgetHealth

log = logging.getLogger(__name__)

BUDGET_USED = Gauge("botburrow_budget_used_pct", "Budget used per tool type (the Hub's or the local ledger's)",
                    ["tool_type"])


class BudgetSource(Protocol):
    async def budget_health(self) -> BudgetHealth: ...


LEDGER_HEALTH_KEY = "health"  # services/metrics/ledger.py writes it


class LedgerHealth:
    """The local ledger's budget health; refused once older than `stale_after_s` (metrics is not writing)."""

    def __init__(self, kv: KeyValue, *, stale_after_s: float = SchedulerSettings.budget_stale_seconds,
                 clock: Callable[[], float] = time.time) -> None:
        self.kv, self.stale_after_s, self.clock = kv, stale_after_s, clock

    async def budget_health(self) -> BudgetHealth:
        entry = await self.kv.get(LEDGER_HEALTH_KEY)  # KeyNotFoundError until metrics first writes it
        health = msgspec.json.decode(entry.value or b"{}", type=BudgetHealth)
        at_s = health.collective.get("at_s")
        if not isinstance(at_s, int | float) or self.clock() - at_s > self.stale_after_s:
            raise LookupError(f"the ledger's budget health is stale (written at {at_s!r})")
        return health


class HubOrLedger:
    """The Hub's budget health while it has one, else the ledger's (a Hub may gain `/system/*` later)."""

    def __init__(self, hub: BudgetSource | None, ledger: BudgetSource,
                 capabilities: CapabilityTracker | None = None) -> None:
        self.hub, self.ledger = hub, ledger
        self.capabilities = capabilities or CapabilityTracker()  # `system` absent until due again

    async def budget_health(self) -> BudgetHealth:
        if self.hub is None or self.capabilities.absent("system"):
            return await self.ledger.budget_health()
        try:
            health = await self.hub.budget_health()
        except (HubEndpointMissing, HubAuthError) as exc:
            # No such route, or no system key to call it with: not an outage, the ledger answers.
            log.warning("the Hub has no budget health: the local ledger's is used", extra={"error": type(exc).__name__})
            self.capabilities.mark_absent("system")
            return await self.ledger.budget_health()
        self.capabilities.mark_present("system")
        return health


class BudgetGate:
    def __init__(self, source: BudgetSource | None, *, cache_s: float = SchedulerSettings.budget_cache_seconds,
                 stale_after_s: float = SchedulerSettings.budget_stale_seconds,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.source, self.cache_s, self.stale_after_s, self.clock = source, cache_s, stale_after_s, clock
        self.statuses: dict[str, str] = {}
        self._fetched_at: float | None = None  # last success
        self._tried_at: float | None = None
        self.version = 0  # bumped whenever a status changed, so callers re-check refused work

    async def refresh(self, *, force: bool = False) -> None:
        """Fetch the statuses if the cache is older than `cache_s` (errors keep the last known ones)."""
        now = self.clock()
        if self.source is None or (not force and self._tried_at is not None and now - self._tried_at < self.cache_s):
            return
        self._tried_at = now
        try:
            health = await self.source.budget_health()
        except Exception as exc:  # the Hub is down or refuses: keep the last known status
            log.warning("budget health unavailable", extra={"error": type(exc).__name__})
            return
        statuses = {tool: budget.status for tool, budget in health.tools.items()}
        for tool, budget in health.tools.items():
            BUDGET_USED.labels(tool).set(budget.used_pct)
        if statuses != self.statuses:
            log.info("budget status changed", extra={"statuses": statuses})
            self.version += 1
        self.statuses, self._fetched_at = statuses, now

    @property
    def stale(self) -> bool:
        return self.source is not None and (self._fetched_at is None
                                            or self.clock() - self._fetched_at > self.stale_after_s)

    def refusal(self, tool_type: str, kind: str, critical: bool) -> str | None:
        """Why this work may not start now (a reason for the refusal event), or None."""
        status = self.statuses.get(tool_type, "healthy")
        if status == "critical" and not critical:
            return "budget_critical"
        if kind != "exploration":
            return None
        if status == "throttle":
            return "budget_throttle"
        if self.stale:
            return "budget_unknown"
        return None
