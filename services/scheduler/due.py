"""Time-ordered queues of agents, so a tick looks only at what is due (not at all 100k agents).

`DueQueue` is a heap of (due time, agent, tag) with lazy deletion: an entry is only a hint, and the
caller re-checks the agent's current state when it pops it (a stale entry is dropped or pushed back).
"""

from __future__ import annotations

import heapq
from datetime import datetime

import msgspec

from schemas.agent import AgentConfig

HOUR_S = 3600.0
# Exploration never comes sooner than this after an agent's last activity (issue: default 15 min).
DEFAULT_MIN_GAP_S = 15 * 60.0
_FREQUENCY_GAP_S = {"staleness": 0.0, "hourly": HOUR_S, "daily": 24 * HOUR_S}


class ExploreRule(msgspec.Struct, frozen=True, kw_only=True):
    """How often an agent with `behavior.discovery.enabled` explores, and the budget it draws on."""

    gap_s: float
    tool_type: str

    @classmethod
    def of(cls, config: AgentConfig, min_gap_s: float = DEFAULT_MIN_GAP_S) -> ExploreRule | None:
        discovery = config.behavior.discovery
        if not discovery.enabled:
            return None
        return cls(gap_s=max(min_gap_s, _FREQUENCY_GAP_S.get(discovery.frequency, 0.0)), tool_type=config.type)


def epoch_s(stamp: str | None) -> float | None:
    """RFC 3339 -> seconds since the epoch (None stays None; unreadable counts as never)."""
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


class DueQueue:
    def __init__(self) -> None:
        self._heap: list[tuple[float, str, str]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, due_s: float, agent: str, tag: str = "") -> None:
        heapq.heappush(self._heap, (due_s, agent, tag))

    def pop_due(self, now_s: float, limit: int | None = None) -> list[tuple[float, str, str]]:
        """Every entry due at `now_s` (earliest first), at most `limit`: O(k log n) for k popped."""
        popped: list[tuple[float, str, str]] = []
        while self._heap and self._heap[0][0] <= now_s and (limit is None or len(popped) < limit):
            popped.append(heapq.heappop(self._heap))
        return popped
