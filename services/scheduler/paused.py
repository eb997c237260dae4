"""`botburrow agent pause|resume`: the `paused` bucket, watched, as the set of paused agents that
`SchedulerState` consults (the decision itself is there: reason `paused`)."""

from __future__ import annotations

import asyncio

from nats.js.kv import KeyValue

from botburrow.runtime.bus import Bus
from botburrow.runtime.service import follow_bucket
from streams import subjects
from streams.topology import PAUSED


class PausedAgents:
    """Agents an operator paused, kept current from the bucket (one set shared by the partitions)."""

    def __init__(self) -> None:
        self._keys: set[str] = set()

    def __contains__(self, agent: object) -> bool:
        return isinstance(agent, str) and subjects.token(agent) in self._keys

    async def follow(self, bus: Bus, stop: asyncio.Event) -> None:
        """Watch the bucket for as long as the scheduler runs (under `supervise`)."""
        await follow_bucket(bus, PAUSED.name, stop, self._apply)

    def _apply(self, entry: KeyValue.Entry | None) -> None:
        if entry is None:
            return  # the marker after the current values
        if entry.operation is None and entry.value:
            self._keys.add(entry.key)
        else:  # resumed: the next tick looks again at its waiting work (`retry_blocked`)
            self._keys.discard(entry.key)
