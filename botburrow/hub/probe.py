"""Keep `HubClient.available` current for `/readyz` in stages that may not call the Hub for a while."""

from __future__ import annotations

import asyncio
import contextlib

from botburrow.hub.client import HubClient

PROBE_EVERY_S = 2.0


async def keep_probing(hub: HubClient, stop: asyncio.Event, every_s: float = PROBE_EVERY_S) -> None:
    """Probe the Hub whenever it is not known to be reachable, until `stop` is set."""
    while not stop.is_set():
        if not hub.available:
            await hub.probe()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
