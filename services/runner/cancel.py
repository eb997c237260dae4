"""`botburrow cancel <activation id>` in the runner: the `cancels` bucket, watched, and the activations
running here that it stops.

A key `cancels.<activation id>` stops that activation if it runs in this process (its task is cancelled
and the activation ends `failed`, reason `cancelled by operator`), and refuses it when a runner takes it
later. The bucket's values are loaded before the first activation is let through, so a cancel written
while the request was queued is never missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from nats.js.kv import KeyValue

from botburrow.runtime.bus import Bus
from botburrow.runtime.service import follow_bucket
from streams import subjects
from streams.topology import CANCELS

log = logging.getLogger(__name__)
REASON = "cancelled by operator"
# How long an activation waits for the bucket's first load (NATS away at start): then it runs unchecked.
LOAD_WAIT_S = 5.0


class Cancelled(Exception):
    """The operator cancelled this activation."""


class Cancels:
    def __init__(self, *, following: bool = False) -> None:
        self._cancelled: set[str] = set()
        self._running: dict[str, asyncio.Task[object]] = {}
        self._fired: set[str] = set()
        self._loaded = asyncio.Event()
        if not following:  # nothing to wait for (offline runs, tests without the bucket)
            self._loaded.set()

    async def follow(self, bus: Bus, stop: asyncio.Event) -> None:
        """Watch the bucket for as long as the runner runs (under `supervise`)."""
        await follow_bucket(bus, CANCELS.name, stop, self._apply)

    def _apply(self, entry: KeyValue.Entry | None) -> None:
        if entry is None:  # the marker after the current values
            self._loaded.set()
        elif entry.operation is None and entry.value:
            self._cancel(entry.key)
        else:  # deleted or purged: no longer cancelled (an id is never reused)
            self._cancelled.discard(entry.key)

    def _cancel(self, key: str) -> None:
        self._cancelled.add(key)
        task = self._running.get(key)
        if task is not None and key not in self._fired:
            log.info("activation cancelled by the operator", extra={"activation_id": key})
            self._fired.add(key)
            task.cancel()

    @contextlib.asynccontextmanager
    async def scope(self, activation_id: str) -> AsyncIterator[None]:
        """Run an activation's work inside: raises Cancelled when the operator cancels it, before or during."""
        key = subjects.token(activation_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._loaded.wait(), LOAD_WAIT_S)
        if key in self._cancelled:
            raise Cancelled(REASON)
        task = asyncio.current_task()
        assert task is not None
        self._running[key] = task
        try:
            yield
        except asyncio.CancelledError:
            # Ours only when we fired and nothing else (the stage stopping) cancelled the task too.
            if key in self._fired and task.uncancel() == 0:
                raise Cancelled(REASON) from None
            raise
        finally:
            self._running.pop(key, None)
            self._fired.discard(key)
