"""A circuit breaker per Hub, so that a Hub that is down is not hammered by every caller's retries.

Closed: calls go through; `threshold` failures of one class since the last answer open it. Open: calls
fail at once until `cooldown_s` has passed. Half-open: one probe call goes through; its success closes
the circuit, its failure opens it again for another cool-down.

Which failures count is this module's one rule (`FailureClass`): the Hub could not be reached
(`unreachable`: connection refused or reset, a 502 from the proxy in front of it), did not answer in
time (`timeout`: a timeout, a 504), or said it is overloaded (`overloaded`: 503). Each class is counted
on its own, so the reason the circuit opened is known (`opened_by`). Any other answer proves the Hub is
up and closes the count: a 4xx, a 429, and a 500, which is that one request's failure (a bad id on
Moltbook answers 500), never the Hub's (contract §1, departure). The client classifies; `breaker_for`
gives one breaker per Hub origin to every client of a process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half-open"]
FailureClass = Literal["unreachable", "timeout", "overloaded"]
FAILURE_CLASSES: tuple[FailureClass, ...] = ("unreachable", "timeout", "overloaded")


class CircuitBreaker:
    def __init__(self, threshold: int = 5, cooldown_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if threshold < 1:
            raise ValueError("threshold must be >= 1")
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._failures: dict[FailureClass, int] = dict.fromkeys(FAILURE_CLASSES, 0)
        self._opened_at: float | None = None
        self._probing = False
        self.opened_by: FailureClass | None = None

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.cooldown_s:
            return "half-open"
        return "open"

    def failures(self, kind: FailureClass) -> int:
        """Failures of this class since the Hub last answered."""
        return self._failures[kind]

    def allow(self) -> bool:
        """Whether a call may go out now; in half-open state only one probe at a time may."""
        state = self.state
        if state == "closed":
            return True
        if state == "open" or self._probing:
            return False
        self._probing = True
        return True

    def record_success(self) -> None:
        """The Hub answered (anything but a failure class): the circuit closes, the counts restart."""
        self._failures = dict.fromkeys(FAILURE_CLASSES, 0)
        self._opened_at = None
        self._probing = False
        self.opened_by = None

    def record_failure(self, kind: FailureClass = "unreachable") -> None:
        self._failures[kind] += 1
        if self._probing or self._failures[kind] >= self.threshold:
            self._opened_at = self._clock()
            self.opened_by = kind
        self._probing = False

    def release(self) -> None:
        """A call ended without an outcome (cancelled): let another probe through."""
        self._probing = False


_BY_HUB: dict[str, CircuitBreaker] = {}


def breaker_for(hub_url: str, *, cooldown_s: float = 30.0, threshold: int = 5) -> CircuitBreaker:
    """The process's one breaker for the Hub at `hub_url` (made on first use with these settings): every
    client of that Hub in the process sees it open and closed at once."""
    origin = hub_url.rstrip("/").removesuffix("/api/v1")  # as HubClient reads HUB_URL
    if origin not in _BY_HUB:
        _BY_HUB[origin] = CircuitBreaker(threshold=threshold, cooldown_s=cooldown_s)
    return _BY_HUB[origin]
