"""What stands in front of the emulated API: injected faults, Moltbook's rate limits, a request log."""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import msgspec
from starlette.requests import Request

from botburrow.doubles.hub_emulator.state import HubFault

API_PREFIX = "/api/v1"


class Fault(msgspec.Struct, kw_only=True):
    """Latency and/or an error status for matching requests: the next `count` of them (None: until
    cleared), each hit with `probability`."""

    latency_ms: float = 0.0
    status: int | None = None
    count: int | None = None
    probability: float = 1.0
    path_prefix: str = API_PREFIX
    method: str | None = None
    retry_after_s: float = 1.0
    # `moltbook`: {"success": false, "error", "code", "hint"}; `detail`: {"detail": msg}.
    error_shape: Literal["moltbook", "detail"] = "moltbook"
    message: str = "injected fault"


class Faults:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.active: list[Fault] = []

    def add(self, fault: Fault) -> None:
        self.active.append(fault)

    def clear(self) -> None:
        self.active.clear()

    def take(self, method: str, path: str) -> Fault | None:
        """The first fault that matches and fires for this request; its count goes down by one."""
        for fault in list(self.active):
            if not path.startswith(fault.path_prefix) or (fault.method and fault.method.upper() != method):
                continue
            if fault.probability < 1.0 and self._rng.random() >= fault.probability:
                continue
            if fault.count is not None:
                fault.count -= 1
                if fault.count <= 0:
                    self.active.remove(fault)
            return fault
        return None


Bucket = Literal["requests", "posts", "comments"]
# Moltbook's limits: (how many, per how many seconds); `requests` per client address there, per key in
# the `botburrow` profile.
MOLTBOOK_LIMITS: dict[Bucket, tuple[int, float]] = {
    "requests": (100, 60.0),
    "posts": (1, 1800.0),
    "comments": (50, 3600.0),
}


class RateLimiter:
    """Sliding windows per key and bucket; `check` refuses with a 429 fault, `hit` counts."""

    def __init__(self, enabled: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = enabled
        self.limits: dict[Bucket, tuple[int, float]] = dict(MOLTBOOK_LIMITS)
        self._clock = clock
        self._hits: dict[tuple[str, Bucket], deque[float]] = {}

    def reset(self) -> None:
        self._hits.clear()

    def check(self, key: str, bucket: Bucket) -> None:
        if not self.enabled:
            return
        limit, window_s = self.limits[bucket]
        hits = self._window(key, bucket)
        if len(hits) < limit:
            return
        now = self._clock()
        retry_after_s = max(1, math.ceil(hits[0] + window_s - now))
        raise HubFault(429, f"rate limit exceeded: {limit} {bucket} per {int(window_s)} s", "RATE_LIMITED",
                       hint=f"retry after {retry_after_s} seconds", headers={
                           "Retry-After": str(retry_after_s),
                           "X-RateLimit-Limit": str(limit),
                           "X-RateLimit-Remaining": "0",
                           "X-RateLimit-Reset": str(math.ceil(time.time() + retry_after_s)),
                       })

    def take(self, key: str, bucket: Bucket, message: str = "Rate limit exceeded") -> dict[str, str]:
        """Moltbook's way: check and count in one step (a request let through counts even if its handler
        then refuses it). Returns the X-RateLimit-* headers every answer carries; a refusal is Moltbook's
        429, its body with `retryAfter` and `retryAfterMinutes`, and `Retry-After`."""
        if not self.enabled:
            return {}
        limit, window_s = self.limits[bucket]
        hits, now = self._window(key, bucket), self._clock()
        allowed = len(hits) < limit
        reset_in_s = hits[0] + window_s - now if hits else window_s
        headers = {"X-RateLimit-Limit": str(limit),
                   "X-RateLimit-Remaining": str(max(0, limit - len(hits) - (1 if allowed else 0))),
                   "X-RateLimit-Reset": str(math.floor(time.time() + reset_in_s))}
        if allowed:
            hits.append(now)
            return headers
        retry_after_s = max(1, math.ceil(reset_in_s))
        raise HubFault(429, message, "RATE_LIMITED", hint=f"Try again in {retry_after_s} seconds",
                       headers={**headers, "Retry-After": str(retry_after_s)},
                       extra={"retryAfter": retry_after_s, "retryAfterMinutes": math.ceil(retry_after_s / 60)})

    def hit(self, key: str, bucket: Bucket) -> None:
        if self.enabled:
            self._window(key, bucket).append(self._clock())

    def _window(self, key: str, bucket: Bucket) -> deque[float]:
        hits = self._hits.setdefault((key, bucket), deque())
        horizon = self._clock() - self.limits[bucket][1]
        while hits and hits[0] <= horizon:
            hits.popleft()
        return hits


def client_ip(request: Request) -> str:
    """The caller's address as Moltbook sees it behind one proxy (Express `trust proxy` 1): the last
    X-Forwarded-For entry, else the socket's peer. Lets a test be two hosts from one."""
    forwarded = [part.strip() for part in request.headers.get("x-forwarded-for", "").split(",") if part.strip()]
    if forwarded:
        return forwarded[-1]
    return request.client.host if request.client else "unknown"


@dataclass
class RequestRecord:
    """Logged when a request arrives (so a test sees it even while it is still being served)."""

    method: str
    path: str
    # time.monotonic() at arrival, before any injected latency.
    at_s: float
    # 0 until the answer is ready.
    status: int = 0
    # The caller: an agent name, "system", or None when the key was unknown or missing.
    caller: str | None = None


@dataclass
class RequestLog:
    records: list[RequestRecord] = field(default_factory=list)

    def matching(self, path_prefix: str = API_PREFIX, method: str | None = None) -> list[RequestRecord]:
        return [r for r in self.records
                if r.path.startswith(path_prefix) and (method is None or r.method == method.upper())]
