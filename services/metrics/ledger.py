"""The local consumption ledger (KV bucket `budget-ledger`, contract §7): spend per tool type per budget
period, and the budget health derived from it against the operator's budgets (BUDGETS_FILE).

For a Hub without `/system/*` (Moltbook), and kept on every Hub, so the scheduler has a budget health
whichever Hub it talks to. Keys:
- `spend.<period>.<tool type>`: a `Spend` (USD, tokens, activations). Updated with compare-and-set, so
  metrics replicas add up; the ids of the last RECENT_KEPT activations it counted ride in the same
  value, so a redelivered batch is never counted twice (the dedup and the sum are one atomic write).
- `tools.<period>`: the tool types with spend in that period (written before their spend), so the health
  is read with one get per tool type.
- `health`: a `schemas.hub.BudgetHealth` (the Hub's own shape, so the scheduler's gate reads either),
  with `collective` saying its source, period and when it was written (`at_s`, epoch seconds).
- `unreported`: the RUNS stream sequence from which ended activations were not reported to the Hub
  (it had no `/system/consumption`): when the route appears, the reporter posts RUNS from there on
  before its next batch, then deletes the key (see `reporter`).
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import msgspec
import yaml
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from botburrow.runtime.bus import Bus
from schemas.codec import DecodeError, decode_subject
from schemas.events import ActivationMetrics
from schemas.hub import BudgetHealth, ToolBudget
from services.metrics.runsread import runs_between
from streams.subjects import token
from streams.topology import ENDINGS, RUN_EVENT

log = logging.getLogger(__name__)

RECENT_KEPT = 1000
CAS_ATTEMPTS = 20
HEALTH_KEY = "health"
UNREPORTED_KEY = "unreported"
# The Hub's thresholds (contract §1, ToolBudget): warning at 80 % used, throttle at 90, critical at 100.
WARNING_PCT, THROTTLE_PCT, CRITICAL_PCT = 80.0, 90.0, 100.0


class ToolLimit(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    usd: float  # spend allowed per period; 0: none


class Budgets(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """BUDGETS_FILE: budgets per tool type for one period. A tool type with neither its own entry nor a
    `default` has no budget: always healthy."""

    period: Literal["day", "month"] = "day"
    tools: dict[str, ToolLimit] = msgspec.field(default_factory=dict)
    default: ToolLimit | None = None

    @classmethod
    def load(cls, path: str | None) -> Budgets:
        if not path:
            return cls()
        raw = Path(path).read_text()
        data = json.loads(raw) if path.endswith(".json") else yaml.safe_load(raw)
        return msgspec.convert(data or {}, cls)

    def period_of(self, at_s: float) -> str:
        return time.strftime("%Y%m%d" if self.period == "day" else "%Y%m", time.gmtime(at_s))

    def limit(self, tool_type: str) -> ToolLimit | None:
        return self.tools.get(tool_type, self.default)


class Spend(msgspec.Struct, kw_only=True):
    usd: float = 0.0
    tokens_input: int = 0
    tokens_output: int = 0
    activations: int = 0
    recent: list[str] = msgspec.field(default_factory=list)  # ids counted last, for redeliveries


def spend_key(period: str, tool_type: str) -> str:
    return f"spend.{period}.{token(tool_type)}"


def tools_key(period: str) -> str:
    return f"tools.{period}"


def health_of(budgets: Budgets, spends: dict[str, Spend]) -> dict[str, ToolBudget]:
    tools = {}
    for tool in sorted(set(spends) | set(budgets.tools)):
        limit, spent = budgets.limit(tool), spends.get(tool, Spend()).usd
        if limit is None:
            tools[tool] = ToolBudget(status="healthy", used_pct=0.0, recommendation="no budget set")
            continue
        used_pct = 100.0 * spent / limit.usd if limit.usd > 0 else (0.0 if spent <= 0 else CRITICAL_PCT)
        status = ("critical" if used_pct >= CRITICAL_PCT else "throttle" if used_pct >= THROTTLE_PCT
                  else "warning" if used_pct >= WARNING_PCT else "healthy")
        tools[tool] = ToolBudget(status=status, used_pct=round(used_pct, 2),
                                 remaining_usd=round(max(0.0, limit.usd - spent), 6))
    return tools


def _ended_s(metrics: ActivationMetrics) -> float:
    try:
        return datetime.fromisoformat(metrics.ended_at.replace("Z", "+00:00")).astimezone(UTC).timestamp()
    except ValueError:
        return time.time()


class Ledger:
    def __init__(self, kv: KeyValue, budgets: Budgets) -> None:
        self.kv, self.budgets = kv, budgets

    async def record(self, events: Iterable[ActivationMetrics]) -> None:
        """Add ended activations to their period's spend, each once whatever the redeliveries."""
        groups: dict[tuple[str, str], list[ActivationMetrics]] = defaultdict(list)
        for metrics in events:
            groups[self.budgets.period_of(_ended_s(metrics)), token(metrics.tool_type)].append(metrics)
        periods: dict[str, set[str]] = defaultdict(set)
        for period, tool in groups:
            periods[period].add(tool)
        for period, tools in periods.items():
            await self._index(period, tools)
        for (period, tool), group in groups.items():
            await self._add(spend_key(period, tool), group)

    async def _add(self, key: str, group: list[ActivationMetrics]) -> None:
        for _ in range(CAS_ATTEMPTS):
            spend, revision = await self._spend(key)
            seen, new = set(spend.recent), []
            for metrics in group:  # once each, whether counted before or twice in this batch
                if metrics.activation_id not in seen:
                    seen.add(metrics.activation_id)
                    new.append(metrics)
            if not new:
                return
            for metrics in new:
                spend.usd += max(0.0, metrics.estimated_cost_usd)
                spend.tokens_input += max(0, metrics.tokens_input)
                spend.tokens_output += max(0, metrics.tokens_output)
                spend.activations += 1
            spend.recent = (spend.recent + [m.activation_id for m in new])[-RECENT_KEPT:]
            try:
                if revision is None:
                    await self.kv.create(key, msgspec.json.encode(spend))
                else:
                    await self.kv.update(key, msgspec.json.encode(spend), last=revision)
                return
            except KeyWrongLastSequenceError:
                continue  # another metrics replica added meanwhile: read again
        raise RuntimeError(f"ledger key {key} contended {CAS_ATTEMPTS} times")  # the batch is retried

    async def _spend(self, key: str) -> tuple[Spend, int | None]:
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return Spend(), None
        return msgspec.json.decode(entry.value or b"{}", type=Spend), entry.revision

    async def spends(self, period: str) -> dict[str, Spend]:
        """This period's spend per tool type: the tools its index names, one get each (no key listing:
        `kv.keys()` is a consumer on the bucket each time, and a batch's worth of them hit its limit)."""
        tools, _ = await self._tools(period)
        return {tool: (await self._spend(spend_key(period, tool)))[0] for tool in tools}

    async def _tools(self, period: str) -> tuple[list[str], int | None]:
        try:
            entry = await self.kv.get(tools_key(period))
        except KeyNotFoundError:
            return [], None
        return msgspec.json.decode(entry.value or b"[]", type=list[str]), entry.revision

    async def _index(self, period: str, tools: set[str]) -> None:
        """Add tool types to the period's index (compare-and-set: replicas add, none is lost)."""
        for _ in range(CAS_ATTEMPTS):
            known, revision = await self._tools(period)
            if tools <= set(known):
                return
            value = msgspec.json.encode(sorted(set(known) | tools))
            try:
                if revision is None:
                    await self.kv.create(tools_key(period), value)
                else:
                    await self.kv.update(tools_key(period), value, last=revision)
                return
            except KeyWrongLastSequenceError:
                continue
        raise RuntimeError(f"ledger key {tools_key(period)} contended {CAS_ATTEMPTS} times")

    async def write_health(self, now_s: float | None = None) -> BudgetHealth:
        """Derive this period's health from the spend and the budgets, and store it for the scheduler."""
        now_s = time.time() if now_s is None else now_s
        period = self.budgets.period_of(now_s)
        health = BudgetHealth(tools=health_of(self.budgets, await self.spends(period)),
                              collective={"source": "local-ledger", "period": period, "at_s": now_s})
        await self.kv.put(HEALTH_KEY, msgspec.json.encode(health))
        return health

    async def unreported_from(self) -> int | None:
        try:
            entry = await self.kv.get(UNREPORTED_KEY)
        except KeyNotFoundError:
            return None
        return int(entry.value or b"0") or None

    async def mark_unreported(self, seq: int) -> None:
        """Remember the first RUNS sequence not reported (the earliest wins: a redelivery may come later)."""
        for _ in range(CAS_ATTEMPTS):
            try:
                entry = await self.kv.get(UNREPORTED_KEY)
            except KeyNotFoundError:
                entry = None
            marked = int(entry.value or b"0") if entry is not None else 0
            if marked and marked <= seq:
                return
            try:
                if entry is None:
                    await self.kv.create(UNREPORTED_KEY, str(seq).encode())
                    log.warning("the Hub has no /system/consumption: consumption kept in the local ledger only",
                                extra={"from_seq": seq})
                else:
                    await self.kv.update(UNREPORTED_KEY, str(seq).encode(), last=entry.revision)
                return
            except KeyWrongLastSequenceError:
                continue

    async def reported(self) -> None:
        await self.kv.delete(UNREPORTED_KEY)


async def ended_since(bus: Bus, from_seq: int, until_seq: int) -> list[tuple[int, ActivationMetrics]]:
    """The ActivationMetrics (with their sequence) of the `completed`/`failed` events of RUNS with
    from_seq <= seq < until_seq, in order, by
    direct gets (next by subject: one get per ended activation; no consumer on RUNS, which holds durables).
    What aged out of RUNS is gone: the catch-up starts at its first message."""
    found: list[tuple[int, ActivationMetrics]] = []
    for ending in ENDINGS:
        async for seq, msg in runs_between(bus, RUN_EVENT.fill("*", "*", ending), from_seq, until_seq):
            try:
                found.append((seq, decode_subject(msg.subject or "", msg.data or b"").metrics))
            except DecodeError:
                continue  # dead-lettered by the consumer when it was first read
    return sorted(found, key=lambda pair: pair[0])
