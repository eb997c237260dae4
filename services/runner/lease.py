"""The agent's lease in the `leases` bucket: at most one activation of an agent runs anywhere.

The bucket's TTL is about the runner consumers' ack wait, so a crashed runner's lease frees itself
about when its message is redelivered. A live runner renews it with every heartbeat.
"""

from __future__ import annotations

import contextlib
import logging
import time

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from botburrow.runtime.election import ride_out
from streams.subjects import token

log = logging.getLogger(__name__)
# Nothing has happened yet when the lease is taken: past this, a short nak (the runner's Retry) is cheap.
ACQUIRE_RIDE_OUT_S = 5.0
RELEASE_RIDE_OUT_S = 15.0


class Lease:
    def __init__(self, kv: KeyValue, agent: str, owner: str) -> None:
        self.kv, self.key, self.owner = kv, token(agent), owner
        self.revision: int | None = None

    async def acquire(self) -> bool:
        """Take the lease (False: another holds it). Retried through an election (`ride_out`): a create
        that landed while its answer was lost finds its own value on the retry, and holds that."""
        return await ride_out(self._acquire, bound_s=ACQUIRE_RIDE_OUT_S, what=f"lease {self.key}")

    async def _acquire(self) -> bool:
        try:
            self.revision = await self.kv.create(self.key, self.owner.encode())
        except KeyWrongLastSequenceError:
            try:
                entry = await self.kv.get(self.key)
            except KeyNotFoundError:  # released meanwhile: the next delivery takes it
                return False
            if entry.value != self.owner.encode():
                return False
            self.revision = entry.revision
        return True

    async def holder(self) -> str | None:
        try:
            entry = await self.kv.get(self.key)
        except KeyNotFoundError:
            return None
        return entry.value.decode() if entry.value else None

    async def lapses_in_s(self, js: JetStreamContext, ttl_s: float) -> float | None:
        """Seconds until the current holder's lease lapses unless it renews it (None: unknown), from the
        server's timestamp of its last write."""
        try:
            last = await js.get_msg(f"KV_{self.kv._name}", subject=f"$KV.{self.kv._name}.{self.key}")
        except Exception:  # gone meanwhile, or NATS trouble
            return None
        if last.time is None:
            return None
        return ttl_s - (time.time() - last.time.timestamp())

    async def renew(self) -> bool:
        if self.revision is None:
            return False
        try:
            self.revision = await self.kv.update(self.key, self.owner.encode(), last=self.revision)
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            log.warning("lease lost", extra={"agent": self.key})
            self.revision = None
            return False
        return True

    async def release(self) -> None:
        """Give it back, riding out an election: kept, it would hold the agent's next activation until
        its TTL (60 s) lapsed."""
        if self.revision is None:
            return
        revision = self.revision

        async def delete() -> None:
            with contextlib.suppress(KeyWrongLastSequenceError, KeyNotFoundError):
                await self.kv.delete(self.key, last=revision)

        await ride_out(delete, bound_s=RELEASE_RIDE_OUT_S, what=f"lease {self.key}")
        self.revision = None
