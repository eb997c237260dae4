"""One request budget per Hub, shared by every stage and replica (issue 16; contract §1).

A Hub like Moltbook answers 100 requests a minute per client address, whoever sends them: every agent,
stage and replica on one host spends one budget. `KvRequestBudget` keeps it in the KV bucket
`hub-budget`, one key per scope: `<hub>.addr` when the Hub limits per address, `<hub>.key.<hash of the
agent key>` when it limits per key (the key itself is never stored).

What is chosen, and why:
- A **sliding log**, not a fixed window: the record holds the wall-clock times of the grants of the last
  window. It is what the Hub itself counts (a fixed window lets twice the limit through across a window
  edge, which a sliding-log Hub answers with 429s). At most `limit` times are kept (100 for Moltbook: a
  value under 2 KB).
- **Compare-and-set on the revision**: read, decide, `update(last=revision)`; a writer that lost the race
  reads again. Contention is bounded by the limit itself: at most `limit` grants a minute succeed,
  whatever the number of callers, so losers retry against a record that fills up and then they wait.
- **Clock skew**: the times are each host's wall clock. A grant counts for `window_s + skew_margin_s`
  (1 s by default), so hosts whose clocks differ by less than the margin never spend more than the Hub
  allows; a larger skew may overspend, and the Hub's 429 with `Retry-After`, recorded here for all, puts
  everyone back in step.
- **Retry-After from any process is honoured by all**: a 429 writes `blocked_until_s` into the record;
  every caller waits until then.
- **Background callers spend what foreground callers leave**: a background caller (ingest) is granted
  only while the window holds fewer than `limit - reserve` grants (the reserve: a fifth of the limit,
  at least 1), so a runner answering a mention always finds room.
- The limit: `HUB_REQUESTS_PER_MINUTE` if set, else the profile's (`moltbook`: 100 per address), else the
  Hub's `X-RateLimit-Limit` header once seen on a read (shared through the record). Writes are not learnt
  from: Moltbook sends its 1-post-per-30-min limiter's header on `POST /posts`.
- **No cap known, nothing counted**: until a limit is known only `Retry-After` is shared, and a process
  reads the record at most once per `UNCAPPED_REFRESH_S` (a cached copy decides meanwhile). Counting
  every request of an uncapped Hub cost two KV round trips per Hub call and a compare-and-set race
  among concurrent activations of one agent (the runner benchmark: posting under 1,000 activations
  at once went from 1.9 s to 12.9 s). The answer that teaches the limit counts as the first grant;
  requests in flight while it was learnt are not counted, and the Hub's 429 corrects that one window.

`MemoryRequestBudget` is the same rule in one process (local tools, tests).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from botburrow.hub.errors import HubRateLimited

log = logging.getLogger(__name__)
Per = Literal["address", "key"]
BUCKET = "hub-budget"
WINDOW_S = 60.0
SKEW_MARGIN_S = 1.0
BACKGROUND_RESERVE = 0.2
CAS_ATTEMPTS = 16
# While no limit is known, how long a process decides on its cached copy of the record (Retry-After news).
UNCAPPED_REFRESH_S = 1.0
# After a lost race past CAS_ATTEMPTS, a short pause before reading again.
CONTENDED_PAUSE_S = 0.05


class Window(msgspec.Struct, frozen=True, kw_only=True):
    """One scope's record: the grants of the last window, oldest first, and what every process shares."""

    granted_s: list[float] = msgspec.field(default_factory=list)
    blocked_until_s: float = 0.0
    # X-RateLimit-Limit as last seen on a read: the limit when no setting or profile gives one.
    learned_limit: int = 0


class RequestBudget(Protocol):
    """What `HubClient` asks before each request and tells after each answer."""

    async def acquire(self, agent_key: str, *, background: bool = False, max_wait_s: float = 30.0) -> None:
        """Return once a request may go out; raise `HubRateLimited` (code `BUDGET_SPENT`, with
        `retry_after_s`) if that would take longer than `max_wait_s`."""

    async def observe(self, agent_key: str, *, limit: int | None = None, retry_after_s: float | None = None) -> None:
        """What an answer said: the Hub's `X-RateLimit-Limit` (reads only) and a 429's `Retry-After`."""


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    granted: Window | None  # the record to write when granted
    wait_s: float  # when not granted: how long before it may be


class Rule(msgspec.Struct, frozen=True, kw_only=True):
    """The pure rule: given a record and the time, grant or say how long to wait."""

    limit: int = 0  # 0: follow the record's learned limit (none yet: no cap)
    window_s: float = WINDOW_S
    skew_margin_s: float = SKEW_MARGIN_S
    background_reserve: float = BACKGROUND_RESERVE

    def effective_limit(self, window: Window) -> int:
        return self.limit or window.learned_limit

    def decide(self, window: Window, now_s: float, *, background: bool) -> Decision:
        if window.blocked_until_s > now_s:
            return Decision(granted=None, wait_s=window.blocked_until_s - now_s)
        limit = self.effective_limit(window)
        span_s = self.window_s + self.skew_margin_s
        if limit <= 0:  # no cap known: grant, with nothing to record (the record given back unchanged)
            return Decision(granted=window, wait_s=0.0)
        recent = [t for t in window.granted_s if t > now_s - span_s][-limit:]
        room = limit - (self.reserve(limit) if background else 0)
        if len(recent) < room:
            granted = msgspec.structs.replace(window, granted_s=[*recent, now_s])
            return Decision(granted=granted, wait_s=0.0)
        # Room comes back when enough of the oldest grants leave the window.
        free_at_s = recent[len(recent) - room] + span_s
        return Decision(granted=None, wait_s=max(free_at_s - now_s, 0.001))

    def reserve(self, limit: int) -> int:
        return min(limit - 1, max(1, math.ceil(limit * self.background_reserve))) if limit > 1 else 0


def scope_of(hub_url: str, agent_key: str, per: Per) -> str:
    """The record's KV key: the Hub, and the agent key's hash when the Hub limits per key."""
    origin = hub_url.rstrip("/").removesuffix("/api/v1")  # as HubClient reads HUB_URL
    hub = hashlib.sha256(origin.encode()).hexdigest()[:12]
    if per == "address":
        return f"{hub}.addr"
    return f"{hub}.key.{hashlib.sha256(agent_key.encode()).hexdigest()[:16]}"


def observed(window: Window, now_s: float, *, limit: int | None, retry_after_s: float | None) -> Window | None:
    """The record after an answer, or None when it says nothing new."""
    changes: dict[str, object] = {}
    if limit and limit > 0 and limit != window.learned_limit:
        changes["learned_limit"] = limit
        if not window.learned_limit:  # the answer that taught it was a request: the first one counted
            changes["granted_s"] = [*window.granted_s, now_s]
    if retry_after_s is not None and now_s + retry_after_s > window.blocked_until_s:
        changes["blocked_until_s"] = now_s + retry_after_s
    return msgspec.structs.replace(window, **changes) if changes else None


_decoder = msgspec.json.Decoder(Window)


class _Store(Protocol):
    async def read(self, scope: str) -> tuple[Window, int | None]: ...

    async def write(self, scope: str, window: Window, revision: int | None) -> bool: ...


class _Budget:
    """Waiting and compare-and-set on a store; the subclasses say where records live."""

    def __init__(self, store: _Store, hub_url: str, *, per: Per, rule: Rule,
                 clock: Callable[[], float], sleep: Callable[[float], Awaitable[None]]) -> None:
        self._store, self.hub_url, self.per, self.rule = store, hub_url, per, rule
        self._clock, self._sleep = clock, sleep
        # scope -> (record, when read): what decides while no cap is known (UNCAPPED_REFRESH_S).
        self._uncapped: dict[str, tuple[Window, float]] = {}
        self._learned: dict[str, int] = {}  # scope -> the Hub's limit as this process last read it

    async def acquire(self, agent_key: str, *, background: bool = False, max_wait_s: float = 30.0) -> None:
        scope = scope_of(self.hub_url, agent_key, self.per)
        waited_s = 0.0
        while True:
            try:
                wait_s = await self._try(scope, background)
            except Exception as exc:  # NATS trouble: the Hub's own 429s still guard it, so do not stop
                log.warning("hub budget unreadable; request sent without it", extra={"error": repr(exc)})
                return
            if wait_s == 0.0:
                return
            if waited_s + wait_s > max_wait_s:
                who = "background" if background else "foreground"
                raise HubRateLimited(0, f"Hub request budget spent ({who}); ask again in {wait_s:.1f} s",
                                     "BUDGET_SPENT", retry_after_s=round(wait_s, 3))
            await self._sleep(wait_s)
            waited_s += wait_s

    async def _try(self, scope: str, background: bool) -> float:
        cached = self._uncapped.get(scope)
        if cached is not None and self._clock() - cached[1] < UNCAPPED_REFRESH_S:
            decision = self.rule.decide(cached[0], self._clock(), background=background)
            return 0.0 if decision.granted is not None else decision.wait_s
        for _ in range(CAS_ATTEMPTS):
            window, revision = await self._store.read(scope)
            self._remember(scope, window)
            decision = self.rule.decide(window, self._clock(), background=background)
            if decision.granted is None:
                return decision.wait_s
            if decision.granted is window or await self._store.write(scope, decision.granted, revision):
                return 0.0
        return CONTENDED_PAUSE_S

    def _remember(self, scope: str, window: Window) -> None:
        """Cache the record while it knows no cap; forget it once one is known (then every grant counts)."""
        self._learned[scope] = window.learned_limit
        if self.rule.effective_limit(window) <= 0:
            self._uncapped[scope] = (window, self._clock())
        else:
            self._uncapped.pop(scope, None)

    async def observe(self, agent_key: str, *, limit: int | None = None, retry_after_s: float | None = None) -> None:
        if not limit and retry_after_s is None:
            return
        scope = scope_of(self.hub_url, agent_key, self.per)
        if retry_after_s is None and limit in (self.rule.limit, self._learned.get(scope)):
            return  # a limit already known here: nothing to learn, no KV round trip
        try:
            for _ in range(CAS_ATTEMPTS):
                window, revision = await self._store.read(scope)
                changed = observed(window, self._clock(), limit=limit, retry_after_s=retry_after_s)
                if changed is None:
                    self._remember(scope, window)
                    return
                if await self._store.write(scope, changed, revision):
                    self._remember(scope, changed)
                    return
        except Exception as exc:
            log.warning("hub budget not updated", extra={"error": repr(exc)})

    async def snapshot(self, agent_key: str = "") -> Window:
        """The record of a scope as stored (for `/readyz` details, metrics, tests)."""
        window, _ = await self._store.read(scope_of(self.hub_url, agent_key, self.per))
        return window


class _KvStore:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def read(self, scope: str) -> tuple[Window, int | None]:
        try:
            entry = await self._kv.get(scope)
        except KeyNotFoundError:
            return Window(), None
        try:
            return _decoder.decode(entry.value or b"{}"), entry.revision
        except msgspec.DecodeError:
            return Window(), entry.revision  # a record no one can read is replaced, not fatal

    async def write(self, scope: str, window: Window, revision: int | None) -> bool:
        value = msgspec.json.encode(window)
        try:
            if revision is None:
                await self._kv.create(scope, value)
            else:
                await self._kv.update(scope, value, last=revision)
        except KeyWrongLastSequenceError:
            return False  # another caller wrote meanwhile: read again
        return True


class KvRequestBudget(_Budget):
    """The budget of one Hub in the KV bucket `hub-budget`, shared by every process that opens it."""

    def __init__(self, kv: KeyValue, hub_url: str, *, per: Per = "address", limit_per_min: int = 0,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        super().__init__(_KvStore(kv), hub_url, per=per, rule=Rule(limit=limit_per_min), clock=clock, sleep=sleep)


class _MemoryStore:
    def __init__(self) -> None:
        self._records: dict[str, tuple[Window, int]] = {}

    async def read(self, scope: str) -> tuple[Window, int | None]:
        window, revision = self._records.get(scope, (Window(), 0))
        return window, revision or None

    async def write(self, scope: str, window: Window, revision: int | None) -> bool:
        current = self._records.get(scope, (Window(), 0))[1]
        if (revision or 0) != current:
            return False
        self._records[scope] = (window, current + 1)
        return True


class MemoryRequestBudget(_Budget):
    """The same rule within one process."""

    def __init__(self, hub_url: str, *, per: Per = "address", limit_per_min: int = 0,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        super().__init__(_MemoryStore(), hub_url, per=per, rule=Rule(limit=limit_per_min), clock=clock, sleep=sleep)
