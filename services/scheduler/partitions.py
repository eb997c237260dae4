"""Which scheduler replica owns which partition of the agents.

The SCHEDULER stream carries `partition(N, agent)` in its subjects (see `streams.topology`); this
module computes the same number (FNV-1a 32 of the agent's subject token, mod N) and shares the N
partitions among the live replicas through the `scheduler-owners` bucket (TTL'd keys):

- `member.<replica id>`: each replica's heartbeat; the live members set the fair share ceil(N / members).
- `part.<n>`: the lease of partition n (created when free, renewed with `update(last=)`).

A replica gives a partition back (stops its consumer, then deletes the lease) when it holds more than
its share; a killed replica's leases expire after the TTL and the others take them over.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from botburrow.runtime.kvread import bucket_keys
from streams import subjects
from streams.topology import SCHEDULER_OWNER_TTL_S, SCHEDULER_PARTITIONS
from streams.topology import original_subject as original_subject  # the scheduler reads sourced subjects

log = logging.getLogger(__name__)
# Longest a replica spends giving its leases and membership back (`_give_back`).
GIVE_BACK_S = 2.0
_FNV_OFFSET, _FNV_PRIME = 0x811C9DC5, 0x01000193


@functools.lru_cache(maxsize=1 << 18)  # hot: every claim maps every known agent (~100 B per entry)
def partition_of(agent: str, partitions: int = SCHEDULER_PARTITIONS) -> int:
    """The partition nats-server's `partition(N, ...)` transform assigns to this agent's subjects."""
    digest = _FNV_OFFSET
    for byte in subjects.token(agent).encode():
        digest = ((digest ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return digest % partitions


OnClaim = Callable[[list[int]], Awaitable[None]]
OnRelease = Callable[[list[int]], Awaitable[None]]


class PartitionOwner:
    """Keeps this replica's fair share of partitions; calls back when it gains or must give some up."""

    def __init__(self, kv: KeyValue, replica: str, *, on_claim: OnClaim, on_release: OnRelease,
                 partitions: int = SCHEDULER_PARTITIONS, ttl_s: float = SCHEDULER_OWNER_TTL_S) -> None:
        self.kv, self.replica = kv, replica
        self.on_claim, self.on_release = on_claim, on_release
        self.partitions, self.ttl_s = partitions, ttl_s
        self.held: dict[int, int] = {}  # partition -> lease revision
        self._renewed_at: dict[int, float] = {}

    def valid(self, partition: int) -> bool:
        """Held, and renewed recently enough that no other replica can have taken it over."""
        renewed = self._renewed_at.get(partition)
        return renewed is not None and time.monotonic() - renewed < self.ttl_s * 0.8

    async def run(self, stop: asyncio.Event) -> None:
        renewing = asyncio.create_task(self._every(stop, self.ttl_s / 4, self.renew), name="partition-renewals")
        try:
            await self._every(stop, self.ttl_s / 4, self.balance)
        finally:
            renewing.cancel()
            await asyncio.gather(renewing, return_exceptions=True)
            await self.release_all()

    async def _every(self, stop: asyncio.Event, interval_s: float, step: Callable[[], Awaitable[None]]) -> None:
        """Run `step` every `interval_s` from its start (a slow step does not stretch the period)."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            started = loop.time()
            try:
                await step()
            except Exception as exc:  # NATS hiccup: keep what we have, try again next time
                log.warning("partition step failed", extra={"step": step.__name__, "error": repr(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, interval_s - (loop.time() - started)))

    async def renew(self) -> None:
        """Renew every held lease at once; a lost one is stopped at once."""
        held = list(self.held)
        renewed = await asyncio.gather(*(self._renew(p) for p in held))
        lost = [p for p, ok in zip(held, renewed, strict=True) if not ok]
        if lost:
            log.warning("partitions lost", extra={"partitions": lost})
            await self.on_release(lost)

    async def balance(self) -> None:
        """Heartbeat, count the live replicas, then give back or claim partitions to hold a fair share."""
        await self.kv.put(f"member.{subjects.token(self.replica)}", b"1")
        members = sum(1 for key in await self._keys() if key.startswith("member."))
        share = math.ceil(self.partitions / max(1, members))
        if len(self.held) > share:
            await self.release(sorted(self.held)[share:])
        if len(self.held) < share:
            gained = []
            for p in range(self.partitions):
                if len(self.held) >= share:  # _create adds to held
                    break
                if p not in self.held and await self._create(p):
                    gained.append(p)
            if gained:
                log.info("partitions claimed", extra={"partitions": gained, "share": share})
                await self.on_claim(gained)

    async def release(self, parts: list[int]) -> None:
        """Stop working the partitions first (the callback), then let the lease go."""
        await self.on_release(parts)
        leases: dict[str, int | None] = {}
        for p in parts:
            revision = self.held.pop(p, None)
            self._renewed_at.pop(p, None)
            if revision is not None:
                leases[f"part.{p}"] = revision
        await self._give_back(leases)
        log.info("partitions released", extra={"partitions": parts})

    async def release_all(self) -> None:
        if self.held:
            await self.release(sorted(self.held))
        await self._give_back({f"member.{subjects.token(self.replica)}": None})

    async def _give_back(self, keys: dict[str, int | None]) -> None:
        """Delete these keys (at their revision, if given), all at once and within GIVE_BACK_S: giving
        them back is a courtesy, they expire after the TTL anyway, and a stop must not wait on a NATS
        that is gone (one delete after another, each to its timeout, held a stop for over a minute)."""
        async def delete(key: str, revision: int | None) -> None:
            with contextlib.suppress(Exception):
                await self.kv.delete(key, last=revision)

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(GIVE_BACK_S):
                await asyncio.gather(*(delete(key, revision) for key, revision in keys.items()))

    async def _keys(self) -> list[str]:
        try:
            return await bucket_keys(self.kv)
        except Exception:  # NATS trouble: this tick counts nobody, the next one counts again
            return []

    async def _create(self, p: int) -> bool:
        sent_at = time.monotonic()  # the server's TTL starts after this, so validity counts from here
        try:
            self.held[p] = await self.kv.create(f"part.{p}", self.replica.encode())
        except Exception:  # held by another replica (KeyWrongLastSequenceError), or NATS trouble
            return False
        self._renewed_at[p] = sent_at
        return True

    async def _renew(self, p: int) -> bool:
        sent_at, last = time.monotonic(), self.held.get(p)
        if last is None:  # released meanwhile
            return True
        try:
            revision = await self.kv.update(f"part.{p}", self.replica.encode(), last=last)
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            self.held.pop(p, None)
            self._renewed_at.pop(p, None)
            return False
        except Exception as exc:  # a timeout: keep it, `valid` lapses if this goes on
            log.warning("lease renewal failed", extra={"partition": p, "error": repr(exc)})
            return True
        if p in self.held:  # not released while the renewal was on its way
            self.held[p], self._renewed_at[p] = revision, sent_at
        return True
