"""The budget gate: `GET /system/budget-health`, cached, turned into refusals per tool type.

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

from prometheus_client import Gauge

from botburrow.settings import SchedulerSettings
from schemas.hub import BudgetHealth

log = logging.getLogger(__name__)

BUDGET_USED = Gauge("botburrow_budget_used_pct", "Budget used per tool type, from GET /system/budget-health",
                    ["tool_type"])


class BudgetSource(Protocol):
    async def budget_health(self) -> BudgetHealth: ...


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
