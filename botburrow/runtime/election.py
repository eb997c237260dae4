"""JetStream's weather: what a leader election (or a node rejoining) raises, and riding it out.

On a cluster, losing a node costs a stream, consumer or the meta group a few seconds without a leader
(4 to 8 s measured on three loopback servers, issue 20). Meanwhile a JetStream or KV call fails with no
responders, a 503 (`ServiceUnavailableError`: no stream answered, or "JetStream not enabled for account"
while a node rejoins) or a timeout. None of these is the message's fault and none is fatal:

- `ride_out(call)` retries such a call with backoff inside a bound (`RIDE_OUT_S`), then raises;
- `is_transient(exc)` tells these apart from everything else (a handler turns them into a short
  `Retry`, never a crash, a dead letter or a dead task);
- `JetStreamProbe` is a stage's `jetstream` readiness check: not ready while JetStream cannot be
  reached at all, ready again on its own.

A retried write must be harmless when its first try did land and only its answer was lost (a timeout):
publishes carry a `Nats-Msg-Id` (deduplicated), a KV `create` finds its own value (see `Lease.acquire`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

log = logging.getLogger(__name__)
T = TypeVar("T")

# How long one call may ride out an election before its caller hears of it: above the 4-8 s an election
# took, well under the runner's 60 s ack wait (the message is heartbeated meanwhile).
RIDE_OUT_S = 20.0
FIRST_BACKOFF_S = 0.25
MAX_BACKOFF_S = 2.0
# The readiness probe: one look every PROBE_EVERY_S; not ready after failing for PROBE_GRACE_S.
PROBE_EVERY_S = 2.0
PROBE_TIMEOUT_S = 2.0
PROBE_GRACE_S = 4.0

TRANSIENT: tuple[type[BaseException], ...] = (
    TimeoutError,  # nats.errors.TimeoutError is one
    nats.errors.NoRespondersError, nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError, nats.errors.NoServersError, nats.errors.FlushTimeoutError,
    nats.js.errors.NoStreamResponseError, nats.js.errors.ServiceUnavailableError,
)


def is_transient(exc: BaseException) -> bool:
    """NATS trouble an election or reconnect causes and time cures (also a 500/504 API error)."""
    if isinstance(exc, TRANSIENT):
        return True
    return isinstance(exc, nats.js.errors.APIError) and (getattr(exc, "code", None) or 0) in (500, 503, 504)


async def ride_out(call: Callable[[], Awaitable[T]], *, bound_s: float = RIDE_OUT_S, what: str = "") -> T:
    """`await call()`, retried with backoff while it fails transiently, for up to `bound_s`; then the
    last error is raised. Any other error is raised at once."""
    deadline = time.monotonic() + bound_s
    delay_s = FIRST_BACKOFF_S
    while True:
        try:
            return await call()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + delay_s > deadline:
                raise
            log.info("jetstream busy, retrying", extra={"what": what, "error": repr(exc)[:200], "retry_in_s": delay_s})
        await asyncio.sleep(delay_s)
        delay_s = min(MAX_BACKOFF_S, delay_s * 2)


class JetStreamProbe:
    """Looks at JetStream (`$JS.API.INFO`, which every stage's user may ask) every PROBE_EVERY_S."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.last_ok = 0.0
        self.answered = False

    def ready(self) -> bool:
        return self.answered and time.monotonic() - self.last_ok < PROBE_GRACE_S

    async def look(self) -> bool:
        try:
            await asyncio.wait_for(self.js.account_info(), PROBE_TIMEOUT_S)
        except Exception as exc:
            if self.answered and self.ready():
                log.warning("jetstream not answering", extra={"error": repr(exc)[:200]})
            return False
        if self.answered and not self.ready():
            log.info("jetstream answering again")
        self.last_ok, self.answered = time.monotonic(), True
        return True

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.look()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PROBE_EVERY_S)
